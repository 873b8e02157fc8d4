"""Bad input gets one clear line, caught at plan time where it can be, and loses nothing already computed:
a dataset switch without a resolution, a resolution too small for a loss network, a missing data root,
a training batch larger than the training split, a corrupt result record, a truncated checkpoint,
unreadable images, garbage or misshapen .npz files for ``benchmark.evaluate``, and a full disk."""

from __future__ import annotations

import errno
import json
import logging
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import MINI_STUDY, REPO, run_cli
from PIL import Image

from benchmark import evaluate
from benchmark.data import build_dataset
from benchmark.errors import ConfigError, DataError, StoreError
from benchmark.store import RunStore, atomic_write, write_json
from benchmark.train import load_checkpoint, save_checkpoint


def one_line_error(capsys) -> str:
    err = capsys.readouterr().err
    assert err.startswith("error: ") and err.count("\n") == 1 and "Traceback" not in err, err
    return err


def dry_run(study: Path, tmp_path: Path) -> int:
    from benchmark.run import main

    return main([str(study), "--profile", "smoke", "--dry-run", "--runs", str(tmp_path / "runs")])


IMAGE_STUDY = """
config: {{tokenizer: {{name: titok, size: tiny, patch_size: 4}}}}
profiles: {{smoke: {{data: {data}}}}}
"""


def test_switching_to_an_image_folder_without_a_resolution_fails_the_dry_run(tmp_path, write_study, capsys):
    image_folder(tmp_path / "data", bad=0)
    study = write_study(IMAGE_STUDY.format(data=f"{{name: imagefolder, root: {tmp_path / 'data'}, eval_dir: val}}"))
    assert dry_run(study, tmp_path) == 2
    assert "data.resolution is not set (data.name: imagefolder)" in one_line_error(capsys)


def test_a_missing_data_root_fails_the_dry_run(tmp_path, write_study, capsys):
    study = write_study(IMAGE_STUDY.format(data=f"{{name: imagefolder, root: {tmp_path}/nope, resolution: 16}}"))
    assert dry_run(study, tmp_path) == 2
    err = one_line_error(capsys)
    assert "mini.yaml: cell base" in err and "data.root" in err and "/nope does not exist" in err


def test_a_resolution_too_small_for_the_loss_network_fails_the_dry_run(tmp_path, write_study, capsys):
    study = write_study(MINI_STUDY)
    lpips = "tokenizer.perceptual={weight: 1.0, net: alex, weights: random}"
    assert run_cli(study, tmp_path, "--dry-run", lpips) == 2
    err = one_line_error(capsys)
    assert "tokenizer.perceptual.net: LPIPS 'alex' needs images of at least 31 px" in err and "data.resolution" in err
    assert not (tmp_path / "runs").exists()
    # the evaluation's LPIPS (VGG, 16 px) is named as the evaluation's, before anything trains
    image_folder(tmp_path / "data", bad=0)
    data = f"{{name: imagefolder, root: {tmp_path / 'data'}, train_dir: val, eval_dir: val, resolution: 8}}"
    small = write_study(IMAGE_STUDY.format(data=data), name="small.yaml")
    from benchmark.run import main

    assert (
        main([str(small), "--profile", "smoke", "--dry-run", "--runs", str(tmp_path / "r"), "eval.metrics=[lpips]"])
        == 2
    )
    err = one_line_error(capsys)
    assert "eval.metrics: lpips: LPIPS 'vgg' needs images of at least 16 px, got (8, 8)" in err


def test_a_constructor_check_fails_the_dry_run(tmp_path, write_study, capsys):
    study = write_study(MINI_STUDY)
    assert run_cli(study, tmp_path, "--dry-run", "tokenizer.patch_size=5") == 2
    assert "tokenizer.patch_size 5 does not divide the image size 16" in one_line_error(capsys)


def test_a_cell_with_its_own_launcher_options_fails_the_dry_run(tmp_path, write_study, capsys):
    """The study is launched once, with one launcher: a cell's own would be ignored, so it is an error."""
    study = write_study(
        MINI_STUDY + "cells:\n  - {label: long, set: {tokenizer.num_latent_tokens: 16, launcher.timeout_min: 600}}\n"
    )
    assert run_cli(study, tmp_path, "--dry-run") == 2
    err = capsys.readouterr().err
    assert "cell long: launcher.timeout_min differs from cell 4's (600 vs" in err and "launcher.stages.<kind>" in err


def test_one_gpu_index_for_several_processes_per_node_fails_the_dry_run(tmp_path, write_study, capsys, monkeypatch):
    """``runtime.device: cuda:1`` would put every process of a node on GPU 1: refused at plan time for a
    stage with several processes per node, and by the process itself; ``cuda`` is each local rank's GPU."""
    from benchmark import distributed

    study = write_study(MINI_STUDY)
    extra = ("runtime.device=cuda:1", "launcher.name=local", "train.batch_size=8")
    assert run_cli(study, tmp_path, "--dry-run", *extra, "launcher.stages={train_tokenizer: {tasks_per_node: 2}}") == 2
    err = one_line_error(capsys)
    assert "runtime.device: cuda:1 would put the 2 processes per node of train_tokenizer on one GPU" in err
    assert run_cli(study, tmp_path, "--dry-run", *extra) == 0
    monkeypatch.setenv("LOCAL_RANK", "1")
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "2")
    assert distributed.device("cuda").type == "cuda" and distributed.device("cpu").type == "cpu"
    with pytest.raises(ConfigError, match=r"runtime\.device: cuda:1 puts all 2 processes of a node on one GPU"):
        distributed.device("cuda:1")


def test_a_batch_that_the_training_stage_would_refuse_fails_the_dry_run(tmp_path, write_study, capsys):
    """The batch sampler refuses a batch larger than the training split, or one that does not split into
    equal shards over the stage's data-parallel processes, only when training starts; the dry run (the
    procedural split's size is known without rendering it) refuses both first."""
    study = write_study(MINI_STUDY)
    assert run_cli(study, tmp_path, "--dry-run", "data.train_size=64", "train.batch_size=65") == 2
    err = one_line_error(capsys)
    assert (
        "mini.yaml: cell 4: train_tokenizer" in err
        and "train.batch_size 65 exceeds the training set's 64 images" in err
    )
    assert run_cli(study, tmp_path, "--dry-run", "data.train_size=64", "train.batch_size=64") == 0
    capsys.readouterr()
    assert (
        run_cli(study, tmp_path, "--dry-run", "launcher.name=local", "launcher.tasks_per_node=3", "train.batch_size=8")
        == 2
    )
    err = one_line_error(capsys)
    assert (
        "train.batch_size 8 (the global batch) does not split into 3 equal shards" in err and "train_tokenizer" in err
    )
    assert not (tmp_path / "runs").exists()


@pytest.mark.parametrize(
    ("option", "stage"),
    [
        ("generator.repa_teacher.pretrain.batch_size", "pretrain_repa_teacher"),
        ("tokenizer.latent_2d.train.batch_size", "train_latent_2d"),
    ],
)
def test_a_prerequisite_stage_batch_larger_than_the_split_fails_the_dry_run(tmp_path, capsys, option, stage):
    """The stages before the tokenizer's (a teacher's pretraining, the OT target's training) go through
    the same batch sampler, so the dry run checks their batches too (paper Fig. 6 at repro: 1024 images)."""
    from benchmark.run import main

    study = REPO / "studies" / "paper_fig6_scaling.yaml"
    args = [str(study), "--profile", "repro", "--runs", str(tmp_path / "runs"), "--dry-run"]
    assert main([*args, f"{option}=1025"]) == 2
    err = one_line_error(capsys)
    assert f"{stage} on 1 node(s)" in err and f"{option} 1025 exceeds the training set's 1024 images" in err
    assert not (tmp_path / "runs").exists()


def test_a_corrupt_result_is_moved_aside_and_the_stage_runs_again(tmp_path, write_study, capsys):
    study = write_study(MINI_STUDY)
    assert run_cli(study, tmp_path) == 0
    result = next((tmp_path / "runs" / "evaluate_tokenizer").iterdir()) / "result.json"
    result.write_text('{"metrics": {"psnr": 1')  # truncated
    assert run_cli(study, tmp_path, "--dry-run") == 0
    captured = capsys.readouterr()
    assert f"run store: {result}: not valid JSON" in captured.err and "moved to result.json.corrupt-" in captured.err
    assert captured.out.count(" to run ") == 1
    assert run_cli(study, tmp_path) == 0
    assert "1 ran, 3 cached" in capsys.readouterr().out
    assert json.loads(result.read_text())["metrics"]["psnr"] > 0
    assert list(result.parent.glob("result.json.corrupt-*"))


def test_a_result_whose_outputs_changed_does_not_count_as_done(tmp_path):
    store = RunStore(tmp_path)
    folder = store.dir("train_tokenizer", "abc")
    folder.mkdir(parents=True)
    (folder / "model.safetensors").write_bytes(b"12345")
    store.finish("train_tokenizer", "abc", {"x": 1})
    assert store.status("train_tokenizer", "abc").state == "done"
    (folder / "model.safetensors").write_bytes(b"123")  # truncated by a crash or a copy
    assert store.status("train_tokenizer", "abc").state == "missing"


def test_a_truncated_checkpoint_falls_back_to_the_previous_one(tmp_path, caplog):
    folder = tmp_path / "ckpt"
    save_checkpoint(folder, {"step": 4, "model": {"w": torch.ones(2)}})
    save_checkpoint(folder, {"step": 8, "model": {"w": torch.zeros(2)}})
    last = folder / "last.pt"
    last.write_bytes(last.read_bytes()[:50])
    with caplog.at_level(logging.WARNING):
        state = load_checkpoint(folder, logging.getLogger("t"))
    assert state["step"] == 4 and state["_path"].endswith("prev.pt")
    assert f"checkpoint {last} is unreadable" in caplog.text


def test_last_checkpoint_exists_while_the_next_one_is_written(tmp_path, monkeypatch):
    """A kill during a save (the slow part is writing the new state) still finds ``last.pt``."""
    folder = tmp_path / "ckpt"
    save_checkpoint(folder, {"step": 4, "model": {"w": torch.ones(2)}})
    seen = []
    real_save = torch.save

    def save_and_look(obj, f):
        seen.append(torch.load(folder / "last.pt", weights_only=True)["step"])
        real_save(obj, f)

    monkeypatch.setattr(torch, "save", save_and_look)
    save_checkpoint(folder, {"step": 8, "model": {"w": torch.zeros(2)}})
    assert seen == [4]
    assert torch.load(folder / "last.pt", weights_only=True)["step"] == 8
    assert torch.load(folder / "prev.pt", weights_only=True)["step"] == 4


def image_folder(root: Path, bad: int) -> Path:
    """root/val/<class>/ with 6 readable images and ``bad`` unreadable ones."""
    for c in ("a", "b"):
        (root / "val" / c).mkdir(parents=True)
        for i in range(3):
            Image.fromarray(np.full((8, 8, 3), 40 * i, np.uint8)).save(root / "val" / c / f"{i}.png")
    for i in range(bad):
        (root / "val" / "b" / f"broken{i}.jpg").write_bytes(b"not an image")
    return root


def test_unreadable_images_are_listed_in_one_error_or_skipped_and_counted(tmp_path):
    root = image_folder(tmp_path, bad=2)
    data = {"name": "imagefolder", "root": str(root), "resolution": 8}
    dataset = build_dataset(data, "eval")
    with pytest.raises(DataError, match="2 of 8 images cannot be read") as info:
        [dataset[i] for i in range(len(dataset))]
    assert "broken0.jpg" in str(info.value) and "broken1.jpg" in str(info.value) and "on_bad_image" in str(info.value)
    skipping = build_dataset({**data, "on_bad_image": "skip"}, "eval")
    assert len(skipping) == 6 and len(skipping.skipped) == 2
    assert all(skipping[i][0].shape == (3, 8, 8) for i in range(6))


def test_evaluate_names_a_garbage_npz_and_the_real_shape(tmp_path, capsys):
    garbage = tmp_path / "samples.npz"
    garbage.write_bytes(b"\x80\x04garbage")
    assert evaluate.main([str(garbage), "--metrics", "gfid"]) == 2
    err = one_line_error(capsys)
    assert "is not an .npz archive" in err and "pickled" not in err
    wrong = tmp_path / "wrong.npz"
    np.savez(wrong, arr_0=np.zeros((5, 3, 8, 8), np.uint8))
    assert evaluate.main([str(wrong), "--metrics", "gfid", "--reference", str(wrong)]) == 2
    assert "(5, 3, 8, 8)" in one_line_error(capsys)


def test_a_full_disk_leaves_the_previous_record_and_says_so(tmp_path, monkeypatch):
    path = tmp_path / "result.json"
    write_json(path, {"ok": 1})

    def full(tmp: Path) -> None:
        tmp.write_text("partial")
        raise OSError(errno.ENOSPC, "No space left on device")

    with pytest.raises(StoreError, match=r"disk full while writing .*result.json .*its previous version is intact"):
        atomic_write(path, full)
    assert json.loads(path.read_text()) == {"ok": 1}
    assert [p.name for p in tmp_path.iterdir()] == ["result.json"]  # no temporary file left behind


def test_ctrl_c_during_a_run_is_one_line_that_says_how_to_resume(tmp_path, write_study, capsys, monkeypatch):
    from benchmark.executors import LocalExecutor

    def interrupted(self, plan, store):  # Ctrl-C while the stages run
        raise KeyboardInterrupt

    monkeypatch.setattr(LocalExecutor, "execute", interrupted)
    assert run_cli(write_study(MINI_STUDY), tmp_path) == 130
    err = capsys.readouterr().err
    assert err.startswith("interrupted: ") and err.count("\n") == 1 and "Traceback" not in err, err
    assert "recorded as interrupted" in err and "same command resumes" in err
    assert not (tmp_path / "results").exists()  # no report of a half run is written
