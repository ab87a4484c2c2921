"""Regression tests of issue 10 for the training command: resume never loses or overwrites a run,
bad values and a bad workdir are one ``error:`` line with exit code 2.

(The fault-injection cases are in tests/test_fault_injection.py.)
"""

import hashlib
import os
import shutil

import pytest

from experiments import main, metrics

FLAGS = ["--method=rigl", "--hidden=16,8", "--num_epochs=2", "--delta_t=15", "--no-progress"]


def digest(folder) -> str:
    h = hashlib.sha256()
    for dirpath, dirs, files in sorted(os.walk(folder)):
        dirs.sort()
        for name in sorted(files):
            with open(os.path.join(dirpath, name), "rb") as f:
                h.update(os.path.join(dirpath, name).encode() + f.read())
    return h.hexdigest()


def one_error_line(capsys) -> str:
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: "), err
    return err[0]


BAD_VALUES = [
    (["--learning_rate=nan"], "learning_rate must be a finite number"),
    (["--learning_rate=inf"], "learning_rate must be a finite number"),
    (["--momentum=5"], "momentum must be in [0, 1)"),
    (["--weight_decay=-1"], "weight_decay must be >= 0"),
    (["--seed=-1"], "seed must be in [0, 2**31)"),
    (["--sparsity=nan"], "sparsity"),
    (["--label_smoothing=inf"], "label_smoothing must be a finite number"),
]


@pytest.mark.parametrize("argv,message", BAD_VALUES, ids=[a[0] for a, _ in BAD_VALUES])
def test_bad_values_are_refused(argv, message, tmp_path, capsys):
    assert main.train_main([*FLAGS, *argv, f"--workdir={tmp_path / 'w'}"]) == 2
    assert message in one_error_line(capsys)
    assert not (tmp_path / "w").exists()


def test_workdir_under_a_file_is_one_error_line(tmp_path, capsys):
    (tmp_path / "file").write_text("not a folder")
    assert main.train_main([*FLAGS, f"--workdir={tmp_path / 'file' / 'run'}"]) == 2
    assert "is a file, not a folder" in one_error_line(capsys)
    assert (tmp_path / "file").read_text() == "not a folder"


def test_unwritable_workdir_is_one_error_line(tmp_path, capsys, monkeypatch):
    (tmp_path / "ro").mkdir()
    real_access = os.access
    monkeypatch.setattr(
        os, "access", lambda p, mode: False if str(p).endswith("ro") else real_access(p, mode)
    )
    assert main.train_main([*FLAGS, f"--workdir={tmp_path / 'ro' / 'run'}"]) == 2
    assert "is not writable" in one_error_line(capsys)


def test_an_os_error_while_training_is_one_error_line(tmp_path, capsys, monkeypatch):
    import errno

    def denied(*args, **kwargs):
        raise PermissionError(errno.EACCES, "Permission denied", str(tmp_path / "w"))

    monkeypatch.setattr(os, "makedirs", denied)
    assert main.train_main([*FLAGS, "--num_train_steps=2", f"--workdir={tmp_path / 'w'}"]) == 2
    line = one_error_line(capsys)
    assert "Permission denied" in line and str(tmp_path / "w") in line, line


@pytest.fixture(scope="module")
def stopped_run(tmp_path_factory):
    """A run stopped by --num_train_steps mid-epoch (step 30 of 44), then its uninterrupted twin."""
    work = tmp_path_factory.mktemp("runs")
    assert main.train_main([*FLAGS, "--num_train_steps=30", f"--workdir={work / 'stopped'}"]) == 0
    assert main.train_main([*FLAGS, f"--workdir={work / 'full'}"]) == 0
    return work


def test_resume_after_a_step_limit_matches_an_uninterrupted_run(stopped_run, tmp_path):
    work = tmp_path / "w"
    shutil.copytree(stopped_run / "stopped", work)
    assert main.train_main([*FLAGS, f"--workdir={work}", "--resume"]) == 0

    def comparable(path):
        return [{k: v for k, v in r.items() if k != "wall_s"} for r in metrics.read(path)]

    resumed = comparable(work / "rigl" / "metrics.jsonl")
    assert [r["step"] for r in resumed if r["type"] == "eval"] == [44, 88]
    assert resumed == comparable(stopped_run / "full" / "rigl" / "metrics.jsonl")


def test_resume_of_a_finished_run_changes_nothing(stopped_run, tmp_path, capsys):
    work = tmp_path / "w"
    shutil.copytree(stopped_run / "full", work)
    before = digest(work / "rigl")
    assert main.train_main([*FLAGS, f"--workdir={work}", "--resume"]) == 0
    assert "| rigl |" in capsys.readouterr().out
    assert digest(work / "rigl") == before


def test_resume_without_checkpoints_refuses_and_keeps_the_metrics(stopped_run, tmp_path, capsys):
    """The data-loss path of issue 10: checkpoints removed (as the old advice said), then --resume
    used to start from scratch and overwrite metrics.jsonl and results.json."""
    work = tmp_path / "w"
    shutil.copytree(stopped_run / "full", work)
    shutil.rmtree(work / "rigl" / "checkpoints")
    before = digest(work)
    assert main.train_main([*FLAGS, f"--workdir={work}", "--resume"]) == 2
    line = one_error_line(capsys)
    assert "no checkpoint to continue from" in line and "nothing was changed" in line, line
    assert digest(work) == before


def test_tiny_imagenet_offline_fails_at_once(tmp_path, monkeypatch):
    """Offline, the tiny_imagenet config used to wait ~204 s on TFDS's download retries: now one
    error before TFDS is asked to download anything."""
    import socket

    import tensorflow_datasets as tfds

    from experiments import data
    from experiments.errors import UserError

    def offline(*args, **kwargs):
        raise socket.gaierror(socket.EAI_AGAIN, "Temporary failure in name resolution")

    asked = []

    def download(self, *args, **kwargs):
        asked.append(args)
        raise RuntimeError("a download was attempted")

    monkeypatch.setattr(socket, "getaddrinfo", offline)
    monkeypatch.setattr(tfds.download.DownloadManager, "download", download)
    config = main.build_config(
        "tiny_imagenet_vgg16", ["--data_source=tfds", f"--data_dir={tmp_path}"]
    )
    with pytest.raises(UserError, match="cannot be reached .*pass --data_dir"):
        data.load_dataset(config)
    assert asked == []
