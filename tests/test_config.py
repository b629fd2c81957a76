import pytest

from nestgen.config import ConfigError, config_from_dict, config_to_dict, library_sections, load_config
from nestgen.configschema import read_yaml_mapping
from pipelines.config import RunConfig


def test_defaults_are_valid_and_round_trip():
    cfg = config_from_dict({})
    again = config_from_dict(config_to_dict(cfg))
    assert again == cfg


def test_shipped_config_loads(tmp_path):
    """A shipped config is a run config: the library's loader takes its own sections of it."""
    cfg = config_from_dict(library_sections(read_yaml_mapping("configs/digits.yaml")))
    assert cfg.model.nest_factors == [1, 2, 4, 8]
    assert cfg.decode.schedule == "magnets"
    assert load_config("configs/digits.yaml", schema=RunConfig).evaluate.num_samples == 2000


@pytest.mark.parametrize("data, field", [
    ({"model": {"widht": 64}}, "model: unknown key(s) ['widht']"),
    ({"trian": {}}, "top level: unknown key(s) ['trian']"),
    ({"model": {"width": "big"}}, "model.width: expected an integer"),
    ({"model": {"width": 100}}, "model.width: must be a positive multiple of heads=8"),
    ({"model": {"nest_factors": [2, 4]}}, "model.nest_factors: must include 1"),
    ({"model": {"nest_factors": [1, 3]}}, "model.nest_factors: factor 3 must divide heads=8"),
    ({"model": {"attention_width": "half"}}, "model.attention_width: must be one of ['nested', 'full']"),
    ({"train": {"lr": -1.0}}, "train.lr: must be > 0"),
    ({"train": {"steps": True}}, "train.steps: expected an integer"),
    ({"train": {"distill": {"value": 2.0}}}, "train.distill.value: must be in [0, 1]"),
    ({"train": {"sizes_per_step": "some"}}, "train.sizes_per_step"),
    ({"decode": {"cache": "sometimes"}}, "decode.cache: unknown cache policy 'sometimes'"),
    ({"decode": {"schedule": "8x3,4x3"}}, "decode.schedule: schedule '8x3,4x3' has 6 steps but 12"),
    ({"decode": {"schedule": "16x12"}}, "decode.schedule: schedule '16x12' uses nest factor 16"),
    ({"decode": {"schedule": "fastest"}}, "decode.schedule: unknown schedule preset 'fastest'"),
])
def test_bad_values_name_the_field(data, field):
    with pytest.raises(ConfigError) as e:
        config_from_dict(data)
    assert field in str(e.value)


def test_overrides_parse_yaml_values():
    cfg = config_from_dict({}, ["train.steps=7", "model.nest_factors=[1, 2]", "decode.schedule=2x6,1x6"])
    assert cfg.train.steps == 7 and cfg.model.nest_factors == [1, 2]
    with pytest.raises(ConfigError, match="expected key=value"):
        config_from_dict({}, ["train.steps"])


def test_float_fields_accept_ints_but_not_strings():
    assert config_from_dict({"train": {"lr": 1}}).train.lr == 1.0
    with pytest.raises(ConfigError, match="train.lr: expected a number"):
        config_from_dict({"train": {"lr": "fast"}})


def test_overrides_leave_the_given_dict_alone():
    data = {"train": {"steps": 3}}
    assert config_from_dict(data, ["train.steps=9"]).train.steps == 9
    assert data == {"train": {"steps": 3}}


def test_the_library_schema_knows_only_library_sections():
    """The library's config is what a checkpoint needs; how it is evaluated and served, and the
    orchestration sections, belong to the run config: the library rejects them in a config,
    and the run's schema is the library's plus those sections."""
    from pipelines.config import run_config_from_dict
    for section in ("scaling", "evaluate", "serve"):
        with pytest.raises(ConfigError, match=rf"top level: unknown key\(s\) \['{section}'\]"):
            config_from_dict({section: {}})
    run = run_config_from_dict({"scaling": {"num_workers": 1}, "train": {"steps": 4}})
    assert isinstance(run, RunConfig) and run.scaling.num_workers == 1 and run.train.steps == 4
    with pytest.raises(ConfigError, match="scaling.num_workers: must be >= 1"):
        run_config_from_dict({"scaling": {"num_workers": 0}})


def test_ray_resources_sit_in_the_run_config_beside_the_library_sections_they_extend():
    """evaluate: and serve: keep every key; the library's parts (EvaluateConfig, EngineConfig)
    hold what nestgen reads, the Ray steps' fields (actors, replicas, resources, the Serve
    app's HTTP limits) are pipelines', checked there and named by their section."""
    import dataclasses

    from nestgen.evaluation.config import EvaluateConfig
    from nestgen.serving.config import EngineConfig
    from pipelines.config import run_config_from_dict
    library = {f.name for c in (EvaluateConfig, EngineConfig) for f in dataclasses.fields(c)}
    ray = {"num_workers", "cpus_per_worker", "checkpoint", "num_replicas", "max_replicas", "cpus_per_replica",
           "gpus_per_replica", "max_ongoing_requests", "max_queued_requests", "max_body_bytes", "api_keys_env"}
    assert library & ray == {"checkpoint"}          # the engine loads a checkpoint; the evaluation is given a model
    run = run_config_from_dict({"evaluate": {"num_workers": 3, "num_samples": 40},
                                "serve": {"num_replicas": 2, "cpus_per_replica": 0.5, "max_batch_size": 24}})
    assert (run.evaluate.num_workers, run.evaluate.num_samples) == (3, 40)
    assert (run.serve.num_replicas, run.serve.cpus_per_replica, run.serve.max_batch_size) == (2, 0.5, 24)
    for section, bad, field in [("evaluate", {"cpus_per_worker": 0}, "evaluate.cpus_per_worker"),
                                ("serve", {"max_replicas": 1, "num_replicas": 2}, "serve.max_replicas"),
                                ("serve", {"max_ongoing_requests": 4}, "serve.max_ongoing_requests"),
                                ("serve", {"max_batch_size": 0}, "serve.max_batch_size")]:
        with pytest.raises(ConfigError, match=field):
            run_config_from_dict({section: bad})


def test_a_pipeline_checkpoint_loads_in_the_library(tmp_path):
    """A checkpoint written with a pipeline run's config holds the orchestration sections too;
    the library reads back its own sections, still strictly."""
    from nestgen.checkpoint import load_model, save_checkpoint
    from nestgen.config import NestgenConfig
    from nestgen.model.nested_transformer import NestedTransformer
    from pipelines.config import run_config_from_dict
    run = run_config_from_dict({"model": {"width": 32, "depth": 1}, "mlflow": {"experiment": "x"}})
    url = save_checkpoint(str(tmp_path / "c.pt"), run, NestedTransformer(run.model))
    _, cfg = load_model(url)
    assert type(cfg) is NestgenConfig and cfg.model == run.model and cfg.train == run.train
    bad = config_to_dict(run) | {"model": {"width": 32, "depth": 1, "widht": 3}}
    with pytest.raises(ConfigError, match="widht"):
        config_from_dict(library_sections(bad))


def test_checkpoints_from_before_the_top_level_seed_still_load():
    old = config_to_dict(config_from_dict({})) | {"train": {"steps": 7, "seed": 3}}
    old.pop("seed")
    cfg = config_from_dict(library_sections(old))
    assert cfg.seed == 3 and cfg.train.steps == 7
