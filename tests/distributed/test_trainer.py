"""The Hugging Face Trainer example (examples/trainer_vera.py): checkpoints are spec files, and resuming
reads them back (on one process here; under torchrun with 2 processes in worker.py's launch, which also
resumes its own checkpoint)."""
import sys

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("transformers")
pytest.importorskip("accelerate")

from conftest import ROOT  # noqa: E402

from test_distributed import run  # noqa: E402,F401 - the one torchrun launch (fixture)

pytestmark = pytest.mark.distributed


@pytest.fixture(scope="module")
def example():
    sys.path.insert(0, str(ROOT / "examples"))
    import trainer_vera
    return trainer_vera


def _files(folder):
    return sorted(p.name for p in folder.iterdir())


def test_checkpoints_are_spec_files_and_resume_is_bit_identical_on_one_process(example, tmp_path):
    import vera_ref
    a, b = tmp_path / "a", tmp_path / "b"
    assert example.main(["--output_dir", str(a), "--max_steps", "4", "--save_steps", "2"]) == 0
    assert example.main(["--output_dir", str(b), "--max_steps", "2", "--save_steps", "2"]) == 0
    # no whole-model weights: only the spec file can give the resumed run its vectors
    assert "vera_adapter.safetensors" in _files(b / "checkpoint-2")
    assert not any(n.startswith(("model", "pytorch_model")) for n in _files(b / "checkpoint-2"))
    assert example.main(["--output_dir", str(b), "--max_steps", "4", "--save_steps", "2",
                         "--resume_from_checkpoint", str(b / "checkpoint-2")]) == 0
    full = (a / "checkpoint-4" / "vera_adapter.safetensors").read_bytes()
    assert (b / "checkpoint-4" / "vera_adapter.safetensors").read_bytes() == full
    two = vera_ref.load_adapter(a / "checkpoint-2" / "vera_adapter.safetensors")
    four = vera_ref.load_adapter(a / "checkpoint-4" / "vera_adapter.safetensors")
    moved = [abs(four.lambda_b[k] - two.lambda_b[k]).max() for k in two.lambda_b]
    assert max(moved) > 0 and "classifier.weight" in four.extra  # trained vectors and the saved head


def test_trainer_under_torchrun_writes_spec_checkpoints_that_resume_on_two_and_one_processes(example, run, tmp_path):
    import shutil
    import vera_ref
    out, _ = run
    for step in (2, 4):
        names = _files(out / "trainer" / f"checkpoint-{step}")
        assert "vera_adapter.safetensors" in names and "rng_state_1.pth" in names, names  # 2 ranks
        ad = vera_ref.load_adapter(out / "trainer" / f"checkpoint-{step}" / "vera_adapter.safetensors")
        assert max(abs(v).max() for v in ad.lambda_b.values()) > 0
    # the same 2 processes resumed from their own checkpoint-2 write the uninterrupted run's bytes
    resumed = out / "trainer_resumed" / "checkpoint-4" / "vera_adapter.safetensors"
    assert resumed.read_bytes() == (out / "trainer" / "checkpoint-4" / "vera_adapter.safetensors").read_bytes()
    # another world size: the 2-process checkpoint resumes on one process
    work = tmp_path / "resume"
    shutil.copytree(out / "trainer" / "checkpoint-2", work / "checkpoint-2")
    assert example.main(["--output_dir", str(work), "--max_steps", "4", "--save_steps", "2", "--batch_size", "8",
                         "--resume_from_checkpoint", "last"]) == 0
    assert (work / "checkpoint-4" / "vera_adapter.safetensors").is_file()


def test_callback_adds_the_spec_file_to_a_plain_trainers_checkpoints(example, tmp_path):
    from transformers import Trainer, TrainingArguments
    from vera_torch.trainer import VeraCheckpointCallback
    assert example.main(["--output_dir", str(tmp_path / "v"), "--max_steps", "2", "--save_steps", "2"]) == 0
    args = TrainingArguments(output_dir=str(tmp_path / "t"), max_steps=2, save_steps=2, per_device_train_batch_size=8,
                             learning_rate=1e-2, lr_scheduler_type="constant", report_to=[], use_cpu=True,
                             remove_unused_columns=False, label_names=["labels"], seed=0, disable_tqdm=True,
                             average_tokens_across_devices=False)
    Trainer(model=example.build(), args=args, train_dataset=example.Synthetic(),
            callbacks=[VeraCheckpointCallback()]).train()
    # the Trainer's own files stay; the callback's spec file holds the same vectors VeraTrainer saved
    got = (tmp_path / "t" / "checkpoint-2" / "vera_adapter.safetensors").read_bytes()
    assert got == (tmp_path / "v" / "checkpoint-2" / "vera_adapter.safetensors").read_bytes()


def test_trainer_fsdp2_writes_spec_checkpoints_and_resumes_bit_identically(run):
    """The Trainer's FSDP2 path (fsdp_config version 2 through Accelerate) on 2 gloo processes, in worker.py's
    launch (with Accelerate's CPU refusal lifted there: see worker.py): sharded vectors at every save, the spec
    file in each checkpoint, and the run resumed from its own checkpoint-2 writes the uninterrupted bytes."""
    import vera_ref
    out, res = run
    assert res["fsdp_trainer_sharded_at_save"] == [True] * 4  # 2 saves, 1, then 1 after resuming (rank 0)
    for step in (2, 4):
        names = _files(out / "fsdp_trainer" / f"checkpoint-{step}")
        # the spec file beside the Trainer's own FSDP files (Accelerate's save_fsdp_model / save_fsdp_optimizer)
        assert {"vera_adapter.safetensors", "optimizer.bin", "rng_state_1.pth"} <= set(names), names
        ad = vera_ref.load_adapter(out / "fsdp_trainer" / f"checkpoint-{step}" / "vera_adapter.safetensors")
        assert max(abs(v).max() for v in ad.lambda_b.values()) > 0
    resumed = out / "fsdp_trainer_resumed" / "checkpoint-4" / "vera_adapter.safetensors"
    assert resumed.read_bytes() == (out / "fsdp_trainer" / "checkpoint-4" / "vera_adapter.safetensors").read_bytes()


def test_fsdp_without_an_accelerator_is_refused_not_silently_ddp(example, tmp_path, capsys):
    assert example.main(["--output_dir", str(tmp_path), "--max_steps", "2", "--fsdp"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "fsdp: FSDP was requested but Accelerate did not enable it" in err, err
    assert not (tmp_path / "checkpoint-2").exists()
