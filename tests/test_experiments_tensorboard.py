"""experiments.tensorboard: the event files hold exactly the numbers of metrics.jsonl."""

from __future__ import annotations

import glob
import json
import struct

from tensorboardX.proto import event_pb2

from experiments import tensorboard

RECORDS = [
    {"type": "init", "step": 0, "epoch": 0.0, "density": {"Dense_0": 0.1}, "global_density": 0.1},
    {"type": "eval", "step": 10, "epoch": 1.0, "test_accuracy": 0.5, "lr": 0.1, "wall_s": 3.0},
    {"type": "topology", "step": 11, "moved": 4, "skipped": False, "density": {"Dense_0": 0.2}},
    {"type": "final", "step": 20, "method": "ggr", "test_accuracy": 0.75},
]


def read_events(logdir) -> list[tuple[str, int, float]]:
    """``(tag, step, value)`` of every scalar in the event files of ``logdir``."""
    out = []
    for path in glob.glob(f"{logdir}/events.out.tfevents.*"):
        data = open(path, "rb").read()
        pos = 0
        while pos < len(data):  # TFRecord framing: length, crc, payload, crc
            (length,) = struct.unpack("<Q", data[pos : pos + 8])
            event = event_pb2.Event.FromString(data[pos + 12 : pos + 12 + length])
            pos += 12 + length + 4
            for v in event.summary.value:
                out.append((v.tag, event.step, round(v.simple_value, 6)))
    return sorted(out)


def write_jsonl(path, records):
    path.write_text("".join(json.dumps(r) + "\n" for r in records))


def test_export_writes_every_number_at_its_step(tmp_path):
    write_jsonl(tmp_path / "metrics.jsonl", RECORDS)
    n = tensorboard.export(str(tmp_path / "metrics.jsonl"), str(tmp_path / "tb"))
    assert read_events(tmp_path / "tb") == [
        ("eval/lr", 10, 0.1),
        ("eval/test_accuracy", 10, 0.5),
        ("init/density/Dense_0", 0, 0.1),
        ("init/global_density", 0, 0.1),
        ("topology/density/Dense_0", 11, 0.2),
        ("topology/moved", 11, 4.0),
    ]
    assert n == 6


def test_export_again_replaces_the_old_events(tmp_path):
    # after a resume drops records from the JSONL, the events drop them too
    write_jsonl(tmp_path / "metrics.jsonl", RECORDS)
    tensorboard.export(str(tmp_path / "metrics.jsonl"), str(tmp_path / "tb"))
    write_jsonl(tmp_path / "metrics.jsonl", RECORDS[:2])
    tensorboard.export(str(tmp_path / "metrics.jsonl"), str(tmp_path / "tb"))
    assert [tag for tag, _, _ in read_events(tmp_path / "tb")] == [
        "eval/lr",
        "eval/test_accuracy",
        "init/density/Dense_0",
        "init/global_density",
    ]


def test_cli_exports_every_method_of_a_workdir(tmp_path, capsys):
    for method in ("rigl", "ggr"):
        (tmp_path / method).mkdir()
        write_jsonl(tmp_path / method / "metrics.jsonl", RECORDS)
    assert tensorboard.main([str(tmp_path)]) == 0
    for method in ("rigl", "ggr"):
        assert len(read_events(tmp_path / method / "tensorboard")) == 6
    assert "tensorboard --logdir" in capsys.readouterr().out
    assert tensorboard.main([str(tmp_path / "rigl" / "tensorboard")]) == 2  # no metrics there


def test_train_flag_writes_events_beside_the_jsonl(tmp_path, capsys):
    from experiments import main, metrics

    work = tmp_path / "w"
    argv = ["--method=rigl", "--num_train_steps=5", f"--workdir={work}", "--no-progress"]
    assert main.train_main([*argv, "--tensorboard"]) == 0
    capsys.readouterr()
    events = read_events(work / "rigl" / "tensorboard")
    numbers = [
        n
        for r in metrics.read(work / "rigl" / "metrics.jsonl")
        if r["type"] != "final"
        for n in tensorboard.scalars(r)
    ]
    assert len(events) == len(numbers) > 0
