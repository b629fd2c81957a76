"""A trained generator as an MLflow pyfunc model: its checkpoint and tokenizer as the model's
artifacts, generation by the serving engine (nestgen.serving.engine).

    input:  a DataFrame with columns label (class id), seed, and optionally schedule (a
            preset name such as "magnets", or a compact schedule; missing or "": the
            checkpoint's own)
    output: the same rows with the schedule that ran, and `png` (PNG bytes; a video as a
            strip of its frames) for models that render pixels, else `tokens` (token ids)

pipelines.model_registry.log_generator logs it as a model from code: MLflow stores this file and
runs it to load the model (the last line names the model), so loading unpickles nothing;
the checkpoint and tokenizer are read as nestgen reads them everywhere (weights only).
Loading needs nestgen installed (`mlflow models serve --env-manager local`).
"""
from __future__ import annotations

import base64

import mlflow
import pandas as pd
from mlflow.pyfunc import PythonModel

CHECKPOINT, TOKENIZER = "checkpoint", "tokenizer"     # the model's artifact names


def generator_engine(checkpoint: str, tokenizer: str = ""):
    """The serving engine over a checkpoint file and its tokenizer (no latency calibration:
    every row names its schedule)."""
    from nestgen.serving.config import EngineConfig
    from nestgen.serving.engine import Engine
    return Engine(EngineConfig(checkpoint=checkpoint, tokenizer=tokenizer, auto_presets=[]))


def output_format(engine) -> str:
    return "png" if "png" in engine.spec.formats else "tokens"


def signature_and_example(engine):
    """(ModelSignature, input example) for the generator behind `engine`."""
    from mlflow.models import ModelSignature
    from mlflow.types import ColSpec, DataType, Schema
    from mlflow.types.schema import Array
    out = (ColSpec(DataType.binary, "png") if output_format(engine) == "png"
           else ColSpec(Array(DataType.long), "tokens"))
    signature = ModelSignature(
        inputs=Schema([ColSpec(DataType.long, "label"), ColSpec(DataType.long, "seed"),
                       ColSpec(DataType.string, "schedule", required=False)]),
        outputs=Schema([ColSpec(DataType.long, "label"), ColSpec(DataType.long, "seed"),
                        ColSpec(DataType.string, "schedule"), out]))
    # one row: MLflow decodes the example when it logs the model, to check it
    schedule = "magnets" if "magnets" in engine.presets else engine.model_cfg.decode.schedule
    return signature, pd.DataFrame({"label": [min(3, max(0, engine.spec.model.num_classes - 1))], "seed": [0],
                                    "schedule": [schedule]})


class NestgenGenerator(PythonModel):
    def load_context(self, context) -> None:
        self.engine = generator_engine(context.artifacts[CHECKPOINT], context.artifacts.get(TOKENIZER, ""))
        self.format = output_format(self.engine)

    def predict(self, context, model_input: pd.DataFrame, params=None) -> pd.DataFrame:
        from mlflow.exceptions import MlflowException
        from mlflow.protos.databricks_pb2 import INVALID_PARAMETER_VALUE

        from nestgen.serving.request import GenerateRequest, RequestError
        rows = model_input.to_dict("records")
        try:
            jobs = [self.engine.resolve(GenerateRequest(
                class_label=int(r["label"]) if self.engine.spec.model.num_classes else None,
                seed=int(r["seed"]), format=self.format,
                schedule=r["schedule"] if isinstance(r.get("schedule"), str) and r["schedule"] else None))
                for r in rows]
        except (RequestError, ValueError) as e:
            raise MlflowException(str(e), INVALID_PARAMETER_VALUE) from None
        responses = []
        step = self.engine.cfg.max_batch_size        # a job is one row: batches of that many rows
        for i in range(0, len(jobs), step):
            for resp in self.engine.run(jobs[i:i + step]):
                if isinstance(resp, Exception):
                    raise resp
                responses.append(resp)
        sample = lambda s: base64.b64decode(s["png"]) if self.format == "png" else s["tokens"]  # noqa: E731
        return pd.DataFrame({"label": [j.labels[0] for j in jobs], "seed": [j.seeds[0] for j in jobs],
                             "schedule": [r["schedule"] for r in responses],
                             self.format: [sample(r["samples"][0]) for r in responses]})


mlflow.models.set_model(NestgenGenerator())
