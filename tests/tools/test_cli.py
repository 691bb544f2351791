import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from coprs.cli import build_parser, main

from ..conftest import TINY_CONFIG  # noqa: TID252


def test_every_subcommand_has_help_with_an_example(capsys):
    parser = build_parser()
    sub = next(a for a in parser._actions if a.dest == "command")
    for name in sub.choices:
        with pytest.raises(SystemExit) as exit_:
            main([name, "--help"])
        assert exit_.value.code == 0
        assert "example:" in capsys.readouterr().out


def test_infer_writes_every_output(tmp_path, capsys):
    img = np.random.default_rng(0).integers(0, 255, (45, 70, 3), dtype=np.uint8)
    Image.fromarray(img).save(tmp_path / "img.png")
    out = tmp_path / "out"
    rc = main(["infer", "--config", str(TINY_CONFIG), str(tmp_path / "img.png"), "the cup",
               "--out", str(out), "--max-new-tokens", "4"])
    assert rc == 0
    for name in ("response.txt", "heatmap.png", "mask.png", "panel.png", "result.json"):
        assert (out / name).is_file(), name
    res = json.loads((out / "result.json").read_text())
    assert res["instruction"] == "the cup" and res["image_size"] == {"height": 45, "width": 70}
    assert isinstance(res["mask_rle"]["counts"], str) and res["format_ok"] is False
    from coprs.datasets.masks import rle_to_mask

    mask = np.asarray(Image.open(out / "mask.png")) > 0
    assert mask.shape == (45, 70)
    assert np.array_equal(rle_to_mask(res["mask_rle"]), mask)
    heat = np.asarray(Image.open(out / "heatmap.png"))
    assert heat.shape == (45, 70, 3) and 0.0 <= res["heatmap_peak"] <= 1.0
    printed = capsys.readouterr().out
    assert "chain of thought" in printed
    assert f"{tuple(res['heatmap_peak_xy'])}, value {res['heatmap_peak']:.2g}" in printed


def test_infer_batch_reports_and_skips_bad_lines(tmp_path, capsys):
    Image.fromarray(np.zeros((30, 30, 3), np.uint8)).save(tmp_path / "ok.png")
    lines = [json.dumps({"image": str(tmp_path / "ok.png"), "instruction": "a"}),
             "{not json",
             json.dumps({"image": str(tmp_path / "missing.png"), "instruction": "b"}),
             json.dumps({"image": str(tmp_path / "ok.png"), "instruction": "c"})]
    (tmp_path / "in.jsonl").write_text("\n".join(lines) + "\n")
    rc = main(["infer", "--config", str(TINY_CONFIG), "--input-jsonl",
               str(tmp_path / "in.jsonl"), "--out", str(tmp_path / "o"),
               "--max-new-tokens", "2"])
    assert rc == 0
    assert (tmp_path / "o" / "000001" / "mask.png").is_file()
    assert (tmp_path / "o" / "000004" / "result.json").is_file()
    err = capsys.readouterr().err
    assert "2 failed" in err and "in.jsonl:2" in err and "missing.png" in err


def test_infer_teacher_forces_a_given_response(tmp_path, capsys):
    Image.fromarray(np.zeros((30, 30, 3), np.uint8)).save(tmp_path / "img.png")
    given = "<think>the left one</think><REF_POS>"
    assert main(["infer", "--config", str(TINY_CONFIG), str(tmp_path / "img.png"), "a",
                 "--out", str(tmp_path / "one"), "--response", given]) == 0
    assert "response (given, teacher-forced): " + given in capsys.readouterr().out
    assert (tmp_path / "one" / "response.txt").read_text() == given + "\n"
    assert json.loads((tmp_path / "one" / "result.json").read_text())["format_ok"] is True
    lines = [json.dumps({"image": str(tmp_path / "img.png"), "instruction": "a",
                         "response": "<think>x</think><REF_POS>"}),
             json.dumps({"image": str(tmp_path / "img.png"), "instruction": "a"}),
             json.dumps({"image": str(tmp_path / "img.png"), "instruction": "a", "response": 3})]
    (tmp_path / "in.jsonl").write_text("\n".join(lines) + "\n")
    assert main(["infer", "--config", str(TINY_CONFIG), "--input-jsonl", str(tmp_path / "in.jsonl"),
                 "--out", str(tmp_path / "b"), "--response", given]) == 0
    assert (tmp_path / "b" / "000001" / "response.txt").read_text() == "<think>x</think><REF_POS>\n"
    assert (tmp_path / "b" / "000002" / "response.txt").read_text() == given + "\n"  # --response
    assert "in.jsonl:3: \"response\" must be a string" in capsys.readouterr().err


def test_infer_batches_give_the_results_of_single_lines(tmp_path, capsys):
    rng = np.random.default_rng(1)
    for i, shape in enumerate([(30, 40, 3), (52, 20, 3), (33, 33, 3)]):
        Image.fromarray(rng.integers(0, 255, shape, dtype=np.uint8)).save(tmp_path / f"{i}.png")
    lines = [json.dumps({"image": str(tmp_path / "0.png"), "instruction": "the left one"}),
             json.dumps({"image": str(tmp_path / "1.png"), "instruction": "a",
                         "response": "<think>x</think><REF_POS>"}),
             json.dumps({"image": str(tmp_path / "nope.png"), "instruction": "b"}),
             json.dumps({"image": str(tmp_path / "2.png"), "instruction": "the largest"}),
             json.dumps({"image": str(tmp_path / "0.png"), "instruction": "  "}),
             json.dumps({"image": str(tmp_path / "1.png"), "instruction": "the top one"})]
    (tmp_path / "in.jsonl").write_text("\n".join(lines) + "\n")
    errors = {}
    for batch in ("1", "4"):
        assert main(["infer", "--config", str(TINY_CONFIG), "--input-jsonl",
                     str(tmp_path / "in.jsonl"), "--out", str(tmp_path / batch),
                     "--max-new-tokens", "5", "--batch-size", batch]) == 0
        errors[batch] = capsys.readouterr().err
    for n in ("000001", "000002", "000004", "000006"):  # 1 and 2 share a batch of 4
        for name in ("result.json", "mask.png", "heatmap.png"):
            assert ((tmp_path / "1" / n / name).read_bytes()
                    == (tmp_path / "4" / n / name).read_bytes()), (n, name)
    assert not (tmp_path / "4" / "000003").exists() and not (tmp_path / "4" / "000005").exists()
    assert "2 failed" in errors["4"] and errors["4"].index("in.jsonl:3") < errors["4"].index(
        "in.jsonl:5: instruction is empty")
    assert errors["1"].splitlines()[-3:] == errors["4"].splitlines()[-3:]
    assert main(["infer", "--config", str(TINY_CONFIG), "--input-jsonl",
                 str(tmp_path / "in.jsonl"), "--batch-size", "0"]) == 2


SAMPLE = str(Path(__file__).resolve().parents[2] / "coprs" / "assets" / "sample.png")


@pytest.mark.parametrize("argv, message", [
    (["infer", "--config", "configs/nope.py", "x.png", "a"], "config"),
    (["infer", "--config", str(TINY_CONFIG), "/nowhere/x.png", "a"], "does not exist"),
    (["infer", "--config", str(TINY_CONFIG), "x.png", "a", "--checkpoint", "/no.pth"],
     "checkpoint"),
    (["infer", "--config", str(TINY_CONFIG)], "IMAGE and INSTRUCTION"),
    # before a model is built: no such GPU here (none on CPU machines, not 100 on GPU ones)
    (["infer", "--config", str(TINY_CONFIG), SAMPLE, "a", "--device",
      "cuda:99"], "--device cuda:99"),
    (["infer", "--config", str(TINY_CONFIG), SAMPLE, "a", "--device",
      "gpu0"], "is not a torch device"),
    (["extract-features", str(TINY_CONFIG), "--device", "cuda:99"], "--device cuda:99"),
    # a folder or a checkpoint where the config belongs; a folder where a JSONL file belongs
    (["count-params", "configs"], "config 'configs' is a folder; give a config file"),
    (["test", SAMPLE, str(TINY_CONFIG)], "is not a config file"),
    # a misspelt training option fails before anything is built, instead of a full run
    (["train", str(TINY_CONFIG), "--cfg-options", "train_cfg.stages.0.iterz=1"],
     "train_cfg.stages.0.iterz is not a stage key (did you mean iters?)"),
    (["train", str(TINY_CONFIG), "--cfg-options", "train_cfg.stage=1"],
     "train_cfg.stage is not an option of ReasoningSegTrainLoop (did you mean stages?)"),
])
def test_user_errors_are_one_line_exit_2(capsys, argv, message):
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error:") and message in err and len(err.splitlines()) == 1


def test_slurm_env_maps_the_task_variables_to_torch_ones(tmp_path, monkeypatch):
    """``--launcher slurm`` on CPU: srun's task variables become torchrun's; the master is the
    first host scontrol names, unless MASTER_ADDR is set."""
    from coprs.commands.common import UsageError, slurm_env

    with pytest.raises(UsageError, match="SLURM_NTASKS, SLURM_NODELIST not set.*slurm_train.sh"):
        slurm_env({"SLURM_PROCID": "0"})
    scontrol = tmp_path / "scontrol"  # stands in for slurm's: one host per line
    scontrol.write_text("#!/bin/sh\n[ \"$1 $2\" = 'show hostname' ] && printf 'gpu-07\\ngpu-08\\n'\n")
    scontrol.chmod(0o755)
    monkeypatch.setenv("PATH", f"{tmp_path}:/usr/bin:/bin")
    env = {"SLURM_PROCID": "3", "SLURM_NTASKS": "8", "SLURM_LOCALID": "1",
           "SLURM_NODELIST": "gpu-[07-08]"}
    slurm_env(env)
    assert {k: env[k] for k in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR",
                                "MASTER_PORT")} == {
        "RANK": "3", "WORLD_SIZE": "8", "LOCAL_RANK": "1", "MASTER_ADDR": "gpu-07",
        "MASTER_PORT": "29500"}
    env = {"SLURM_PROCID": "2", "SLURM_NTASKS": "4", "SLURM_NODELIST": "n1",
           "MASTER_ADDR": "10.0.0.5", "MASTER_PORT": "1234"}
    slurm_env(env)
    assert (env["MASTER_ADDR"], env["MASTER_PORT"], env["LOCAL_RANK"]) == ("10.0.0.5", "1234", "2")
    monkeypatch.setenv("PATH", str(tmp_path / "empty"))  # no scontrol at all
    with pytest.raises(UsageError, match="SLURM_NODELIST='n1'.*set MASTER_ADDR"):
        slurm_env({"SLURM_PROCID": "0", "SLURM_NTASKS": "1", "SLURM_NODELIST": "n1"})


def test_launcher_without_its_launcher_is_a_one_line_error(tmp_path, capsys, monkeypatch):
    for k in ("RANK", "WORLD_SIZE", "SLURM_PROCID", "SLURM_NTASKS", "SLURM_NODELIST"):
        monkeypatch.delenv(k, raising=False)
    assert main(["test", str(TINY_CONFIG), "--launcher", "slurm", "--work-dir", str(tmp_path)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: --launcher slurm needs srun") and len(err.splitlines()) == 1
    assert main(["train", str(TINY_CONFIG), "--launcher", "pytorch"]) == 2
    assert "needs torchrun" in capsys.readouterr().err


def test_print_config_merges_bases_and_overrides(tmp_path, capsys):
    from mmengine.config import Config

    flat = tmp_path / "flat" / "cfg.py"
    assert main(["print-config", str(TINY_CONFIG), "--cfg-options",
                 "train_cfg.stages.1.iters=7", "--save-path", str(flat)]) == 0
    out = capsys.readouterr().out
    assert "_base_" not in out and "kind='grpo'" in out and "iters=7" in out
    saved = Config.fromfile(str(flat))
    assert "_base_" not in flat.read_text()  # loads on its own
    expect = Config.fromfile(str(TINY_CONFIG))
    expect.merge_from_dict({"train_cfg.stages.1.iters": 7})
    assert saved.to_dict() == expect.to_dict()
    assert main(["print-config", str(TINY_CONFIG), "--save-path", str(tmp_path / "c.json")]) == 2
    assert "must end in .py" in capsys.readouterr().err


def test_print_config_of_a_checkpoint_is_the_config_it_was_trained_with(tmp_path, capsys):
    import torch
    from mmengine.config import Config

    trained = Config.fromfile(str(TINY_CONFIG))
    trained.merge_from_dict({"model.prior.num_heads": 2})
    work = tmp_path / "work"
    work.mkdir()
    torch.save({"meta": {"iter": 4, "cfg": trained.pretty_text},
                "state_dict": {"w": torch.zeros(2)}}, work / "iter_4.pth")
    (work / "last_checkpoint").write_text(str(work / "iter_4.pth"))
    for source in (work / "iter_4.pth", work):  # the file, or the work dir's last checkpoint
        assert main(["print-config", str(source), "--save-path", str(tmp_path / "c.py")]) == 0
        capsys.readouterr()
        assert Config.fromfile(str(tmp_path / "c.py")).to_dict() == trained.to_dict()
    assert main(["print-config", str(work), "--cfg-options", "model.prior.num_heads=8"]) == 0
    assert "num_heads=8" in capsys.readouterr().out
    torch.save({"state_dict": {"w": torch.zeros(2)}}, tmp_path / "plain.pth")
    assert main(["print-config", str(tmp_path / "plain.pth")]) == 2
    assert "carries no config (meta['cfg'])" in capsys.readouterr().err
    assert main(["print-config", str(TINY_CONFIG), "--save-path", str(tmp_path / "c.txt")]) == 2
    out, err = capsys.readouterr()
    assert "must end in .py" in err and out == ""  # checked before the config is printed
    assert main(["print-config", str(tmp_path / "absent.pth")]) == 2
    assert "absent.pth' does not exist" in capsys.readouterr().err


def test_version_and_collect_env(capsys):
    from importlib import metadata

    from coprs import __version__
    from coprs.commands.collect_env import PACKAGES

    with pytest.raises(SystemExit) as exc:
        main(["--version"])
    assert exc.value.code == 0 and capsys.readouterr().out.strip() == f"coprs {__version__}"
    assert main(["collect-env", "--json"]) == 0
    env = json.loads(capsys.readouterr().out)
    import torch

    from coprs.utils import source_version

    assert env["coprs"] == source_version() and env["PyTorch"].startswith(torch.__version__)
    assert env["CUDA available"] == str(torch.cuda.is_available())
    assert set(PACKAGES) <= set(env) and env["pluggy"] != "-"
    try:  # an optional extra: its version when installed, '-' when not
        vllm = metadata.version("vllm")
    except metadata.PackageNotFoundError:
        vllm = "-"
    assert env["vllm"] == vllm
    assert main(["collect-env"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert f"coprs: {source_version()}" in lines
    assert any(line.startswith("coprs plugins: ") for line in lines)


def test_amp_switches_the_optimiser_wrapper_to_bf16_autocast(capsys):
    from mmengine.config import Config

    from coprs.commands.common import UsageError
    from coprs.commands.train import enable_amp

    cfg = Config.fromfile(str(TINY_CONFIG))
    before = cfg.optim_wrapper.to_dict()
    enable_amp(cfg)
    after = cfg.optim_wrapper.to_dict()
    assert after.pop("type") == "AmpOptimWrapper" and after.pop("dtype") == "bfloat16"
    assert after.pop("loss_scale") == {"enabled": False}  # bf16 needs no loss scaling
    before.pop("type", None)
    assert after == before  # optimiser, clipping and parameter groups as configured
    cfg = Config.fromfile(str(TINY_CONFIG))
    cfg.optim_wrapper.dtype = "float16"
    enable_amp(cfg)  # an explicit dtype is kept, and float16 keeps mmengine's dynamic scaler
    assert cfg.optim_wrapper.dtype == "float16" and "loss_scale" not in cfg.optim_wrapper
    cfg.optim_wrapper.type = "MyWrapper"
    with pytest.raises(UsageError, match="optim_wrapper is MyWrapper"):
        enable_amp(cfg)
    import torch

    if not torch.cuda.is_available():
        assert main(["train", str(TINY_CONFIG), "--amp"]) == 2
        assert "--amp needs a CUDA GPU" in capsys.readouterr().err


def test_infer_jsonl_lines_say_what_is_wrong(tmp_path):
    from coprs.commands.common import read_jsonl

    path = tmp_path / "in.jsonl"
    path.write_text('{"image": "a.png", "instruction": "x"}\n{"image": "a.png",\n[1]\n'
                    '{"image": "a.png"}\n\n')
    items = read_jsonl(str(path))
    assert [n for n, _, _ in items] == [1, 2, 3, 4]
    assert items[0][1] == {"image": "a.png", "instruction": "x"} and items[0][2] is None
    assert "in.jsonl:2: not JSON (" in items[1][2]
    assert "in.jsonl:3: expected a JSON object" in items[2][2]
    assert "in.jsonl:4: missing ['instruction']" in items[3][2]


def test_a_cfg_option_without_equals_is_a_usage_error_naming_it(capsys):
    with pytest.raises(SystemExit) as exc:
        main(["train", str(TINY_CONFIG), "--cfg-options", "train_cfg.max_iters=3", "foo"])
    assert exc.value.code == 2
    assert "--cfg-options: 'foo' is not KEY=VALUE" in capsys.readouterr().err


def test_a_mistyped_option_gets_the_subcommands_usage_and_a_suggestion(capsys):
    with pytest.raises(SystemExit) as exc:
        main(["infer", "--config", str(TINY_CONFIG), "--chekpoint", "w", SAMPLE, "x"])
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith("usage: coprs infer")
    assert "unrecognized arguments: --chekpoint (did you mean --checkpoint?) x" in err
    with pytest.raises(SystemExit):
        main(["test", str(TINY_CONFIG), "--limt", "3"])
    assert "coprs test: error: unrecognized arguments: --limt (did you mean --limit?)" in (
        capsys.readouterr().err)


def test_output_piped_into_a_reader_that_stops_early_is_not_an_error():
    """``coprs list | head -1``: the reader closes the pipe; the command exits 0, no traceback."""
    import subprocess
    import sys

    proc = subprocess.Popen([sys.executable, "-m", "coprs.cli", "list"], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE)
    proc.stdout.close()  # what `head -1` does once it has its line (here before any line)
    err = proc.stderr.read().decode()
    assert proc.wait(timeout=120) == 0, err
    assert "Traceback" not in err and "BrokenPipe" not in err, err


def test_training_stopped_by_nonfinite_steps_is_one_line_exit_1(monkeypatch, capsys):
    from coprs.commands import collect_env

    def diverged(args):
        raise FloatingPointError("5 non-finite training steps in a row (…), the limit "
                                 "train_cfg.max_nonfinite_steps=5; lower the learning rate")

    monkeypatch.setattr(collect_env, "run", diverged)
    assert main(["collect-env"]) == 1
    err = capsys.readouterr().err
    assert err.startswith("error: 5 non-finite") and "Traceback" not in err
    with pytest.raises(FloatingPointError):  # --debug shows the traceback
        main(["collect-env", "--debug"])


def test_a_folder_given_as_the_input_jsonl_is_named_as_a_folder(tmp_path):
    from coprs.commands.common import UsageError, read_jsonl

    with pytest.raises(UsageError, match="is a folder; give a JSON-lines file"):
        read_jsonl(str(tmp_path))
