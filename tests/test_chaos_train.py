"""Training and the driver under real process deaths on a local multi-node Ray cluster
(conftest's chaos_cluster: 2-CPU worker nodes w1, w2 and a 1-CPU w3 on 127.0.0.1; scenarios
in chaoskit.train_faults). Each Train rank sits on its own 2-CPU worker node and pauses at
step 13 of 20 (checkpoints every 10) the first time, which is where the harness kills;
`cluster` starts the killed node again after each test."""
import pytest

pytestmark = pytest.mark.timeout(900)


def _exact_and_tracked_once(row: dict) -> None:
    assert not row.get("hung")
    assert row["final_step"] == 20 and row["checkpoint_step"] == 20
    assert row["scheduler_steps"] == 20                    # 20 optimizer steps in all, none twice
    assert row["start_step"] == 10                         # restored from the step-10 checkpoint
    assert row["mlflow_runs"] == 1 and row["mlflow_statuses"] == ["FINISHED"]
    assert row["duplicate_metric_steps"] == 0 and sorted(row["loss"]) == [5, 10, 15, 20]


@pytest.mark.cluster
def test_a_node_dying_mid_training_restores_from_the_checkpoint_when_it_returns(cluster, tmp_path):
    from chaoskit.train_faults import train_scenario
    row = train_scenario(cluster, tmp_path, node_returns=True)
    assert "failure" not in row, row
    _exact_and_tracked_once(row)


@pytest.mark.cluster
def test_a_node_that_stays_down_fails_the_fit_in_one_line_and_the_next_run_resumes(cluster, tmp_path):
    """Ray Train alone would retry placing the lost rank for ever (a hang); the fit fails
    after max_failures starts instead, with the cause and the fix, and a fit once the node is
    back continues from the checkpoint in the same MLflow run."""
    from chaoskit.train_faults import train_scenario
    row = train_scenario(cluster, tmp_path, node_returns=False)
    assert "could not start its workers" in row["failure"] and "\n" not in row["failure"], row.get("failure")
    assert "resumes from its last checkpoint" in row["failure"]
    _exact_and_tracked_once(row)


@pytest.mark.cluster
def test_a_killed_nestgen_run_is_taken_over_after_its_lease_and_resumes(cluster, tmp_path):
    """`nestgen run` SIGKILLed mid-train: run again at once it is refused (the lease names the
    dead run); after the lease's TTL it takes over, resumes from the checkpoint, and MLflow
    has one train run and the dead pipeline run ended KILLED."""
    import ray

    from chaoskit.train_faults import driver_scenario
    ray.shutdown()                  # the drivers are `nestgen run` processes
    try:
        row = driver_scenario(cluster, tmp_path)
    finally:
        cluster.connect()
    assert row["refused_rc"] == 2 and "is in use by 'nestgen run (driver)'" in row["refused"][0], row["refused"]
    assert row["rerun_rc"] == 0, row["rerun_tail"]
    assert row["step_status"] == "done" and row["start_step"] == 10
    assert row["checkpoint_step"] == 20 and row["scheduler_steps"] == 20
    assert row["mlflow_runs"] == 1 and row["mlflow_statuses"] == ["FINISHED"]
    assert row["duplicate_metric_steps"] == 0 and sorted(row["loss"]) == [5, 10, 15, 20]
    assert row["pipeline_runs"] == ["FINISHED", "KILLED"]


def test_a_run_that_died_is_ended_killed_by_the_run_that_takes_its_folder_over(tmp_path):
    """The lease makes the new run the folder's only writer: a pipeline run of that folder
    still RUNNING belongs to a process that died; it ends KILLED, naming its successor (a
    pipeline run elsewhere is left alone)."""
    from types import SimpleNamespace

    from mlflow.tracking import MlflowClient

    from pipelines.config import run_config_from_dict
    from pipelines.dag_mlflow import MlflowTracker
    from pipelines.mlflow_runs import start_run
    cfg = run_config_from_dict({"name": "takeover", "mlflow": {"tracking_uri": f"sqlite:///{tmp_path}/m.db",
                                                               "experiment": "takeover"}})
    dead = start_run(cfg, "pipeline", str(tmp_path / "out"))
    elsewhere = start_run(cfg, "pipeline", str(tmp_path / "other"))
    tracker = MlflowTracker(cfg)
    tracker.start(SimpleNamespace(output_url=str(tmp_path / "out"), steps=[]))
    client = MlflowClient(cfg.mlflow.tracking_uri)
    assert client.get_run(dead.run_id).info.status == "KILLED"
    assert client.get_run(dead.run_id).data.tags["nestgen.continued_by"] == tracker.run_id
    assert client.get_run(elsewhere.run_id).info.status == "RUNNING"
    assert client.get_run(tracker.run_id).info.status == "RUNNING"


def test_ray_trains_start_timeout_is_one_line_with_the_fix():
    from ray.train.v2._internal.exceptions import WorkerGroupStartupTimeoutError
    from ray.train.v2.api.exceptions import ControllerError

    from pipelines.dag import StepFailed
    from pipelines.errors import explain
    try:
        try:
            raise ControllerError(WorkerGroupStartupTimeoutError(2))
        except ControllerError as e:
            raise StepFailed(f"step 'train' failed (after 1 attempts): ControllerError: {e}") from e
    except StepFailed as e:
        line = explain(e)
    assert "\n" not in line and line.startswith("step 'train' failed: Ray Train could not start its workers")
    assert "waiting for 2 workers" in line and "bring the node back" in line
