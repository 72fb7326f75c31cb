"""The bad-input catalogue (issue 8): each user mistake is rejected with a message naming what, where and the fix,
before a model is loaded where possible; on the command line it prints the message alone and exits non-zero."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from conftest import compose, run_cli


def write(tmp_path: Path, lines, name: str = "data.jsonl") -> Path:
    path = tmp_path / name
    path.write_text("".join((line if isinstance(line, str) else json.dumps(line)) + "\n" for line in lines))
    return path


def load(path, *overrides, stage: str = "sft"):
    from medgpt.data import load_data

    cfg = compose(f"stage={stage}", f"data.train_files=[{path}]", "data.eval_split=0", *overrides)
    return load_data(cfg.data, cfg.stage, seed=cfg.seed)


CPU = {"cuda": False, "bf16": False}  # medgpt.config.resolve's device for these tests
CHAT = {"messages": [{"role": "user", "content": "Is fever dangerous?"}, {"role": "assistant", "content": "Often not."}]}


def test_empty_file(tmp_path):
    from medgpt.errors import DataError

    path = tmp_path / "empty.jsonl"
    path.write_text("")
    with pytest.raises(DataError, match=f"{path}: the file is empty. Fix: remove it"):
        load(path)


def test_missing_file_and_glob_without_match(tmp_path):
    from medgpt.errors import UserError

    with pytest.raises(UserError, match="data.train_files: no such file .*nowhere.jsonl"):
        load(tmp_path / "nowhere.jsonl")
    with pytest.raises(UserError, match=r"the glob .*\*.jsonl' matches no file"):
        load(tmp_path / "*.jsonl")


def test_invalid_json_names_the_line(tmp_path):
    from medgpt.errors import DataError

    path = write(tmp_path, [CHAT, '{"messages": [oops'])
    with pytest.raises(DataError, match=f"{path}:2: invalid JSON .*Fix: make each line one complete JSON object"):
        load(path)


def test_wrong_keys_for_the_stage(tmp_path):
    from medgpt.errors import UserError

    with pytest.raises(UserError, match=r":1: no known format has these keys: \['foo'\].*data.columns"):
        load(write(tmp_path, [{"foo": "bar"}]))
    with pytest.raises(UserError, match="format 'text' .*which stage=sft does not accept. It accepts: sharegpt"):
        load(write(tmp_path, [{"text": "plain text"}], name="text.jsonl"))


def test_unknown_role(tmp_path):
    from medgpt.errors import DataError

    record = {"conversations": [{"from": "alien", "value": "hi"}, {"from": "gpt", "value": "hello"}]}
    with pytest.raises(DataError, match=":1: turn 1 has unknown role 'alien'"):
        load(write(tmp_path, [record]))


def test_conversation_without_answer_is_dropped_and_trailing_question_cut(tmp_path):
    """Real-world chats (MedicalGPT's own multi-turn samples): never fatal, counted."""
    no_answer = {"messages": [{"role": "user", "content": "Is fever dangerous?"}]}
    trailing = {"messages": CHAT["messages"] + [{"role": "user", "content": "继续"}]}
    train, _ = load(write(tmp_path, [CHAT, no_answer, trailing]))
    assert [r["messages"] for r in train.rows] == [CHAT["messages"], CHAT["messages"]]
    assert train.cleaned == {"dropped_no_answer": 1, "trimmed_trailing_turns": 1} and not train.skipped
    assert train.counts() == {"dropped_no_answer": 1, "trimmed_trailing_turns": 1}


def test_empty_text(tmp_path):
    from medgpt.errors import DataError

    with pytest.raises(DataError, match=":2: the text is empty"):
        load(write(tmp_path, [{"text": "Fever is common."}, {"text": "   "}]), stage="pt")


@pytest.mark.parametrize("policy, counted", [("truncate", "truncated"), ("drop", "dropped_overlong")])
def test_overlong_samples_are_truncated_or_dropped_and_counted(policy, counted):
    from medgpt.config import resolve
    from medgpt.modeling.load import load_tokenizer
    from medgpt.stages import sft

    cfg = compose("data.max_length=64", f"data.overlong={policy}")
    long = {"messages": [{"role": "user", "content": "fever " * 5}, {"role": "assistant", "content": "rest " * 200}]}
    dataset, counts = sft.prepare([CHAT, long], load_tokenizer(cfg.model), cfg, resolve(cfg, CPU))
    assert counts[counted] == 1
    assert len(dataset) == (2 if policy == "truncate" else 1)
    assert max(len(ids) for ids in dataset["input_ids"]) <= 64


def test_overlong_sample_with_policy_error():
    from medgpt.config import resolve
    from medgpt.errors import UserError
    from medgpt.modeling.load import load_tokenizer
    from medgpt.stages import sft

    cfg = compose("data.max_length=64", "data.overlong=error")
    long = {"messages": [{"role": "user", "content": "fever"}, {"role": "assistant", "content": "rest " * 200}]}
    with pytest.raises(UserError, match="sample 2 has .* tokens, more than max_length=64. Raise data.max_length"):
        sft.prepare([CHAT, long], load_tokenizer(cfg.model), cfg, resolve(cfg, CPU))


def test_preference_pair_with_identical_answers(tmp_path):
    from medgpt.data.loading import load_split
    from medgpt.errors import DataError

    path = write(tmp_path, [{"prompt": "Is fever dangerous?", "chosen": "Often not.", "rejected": "Often not. "}])
    with pytest.raises(DataError, match=":1: chosen and rejected are identical. Fix: remove the pair"):
        load_split([path], accepted=["trl_preference"])


@pytest.mark.parametrize("group, valid", [("model", "tiny"), ("stage", "sft"), ("hardware", "qlora4")])
def test_unknown_config_name_lists_the_valid_ones(group, valid):
    result = run_cli(f"{group}=nosuch", "--cfg", "job")
    output = result.stdout + result.stderr
    assert result.returncode != 0
    assert f"Could not find '{group}/nosuch'" in output and f"Available options in '{group}'" in output
    assert f"\t{valid}\n" in output and "Traceback" not in output


def test_flash_attention_without_cuda_suggests_cpu():
    import torch

    from medgpt.config import resolve
    from medgpt.errors import UserError
    from medgpt.modeling.load import load_model

    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    cfg = compose("model.attn_implementation=flash_attention_2")
    with pytest.raises(UserError, match="flash_attention_2 needs a CUDA GPU; none is visible. Use model.attn_implementation=sdpa .*hardware=cpu"):
        load_model(cfg.model, cfg.hardware, resolve(cfg, CPU))


def test_qlora_without_cuda_or_bitsandbytes(monkeypatch):
    """QLoRA runs on a CPU through bitsandbytes' CPU backend; without that package the message says what to do."""
    import sys

    import torch

    from medgpt.config import resolve
    from medgpt.errors import UserError
    from medgpt.modeling.load import load_model

    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    monkeypatch.setitem(sys.modules, "bitsandbytes", None)
    cfg = compose("hardware=qlora4")
    with pytest.raises(UserError, match="quantization=4bit without a CUDA GPU needs bitsandbytes.*hardware=cpu"):
        load_model(cfg.model, cfg.hardware, resolve(cfg, CPU))


@pytest.mark.parametrize("override", ["stage.args.per_device_train_batch_size=0",
                                      "stage.args.gradient_accumulation_steps=0"])
def test_zero_global_batch_fails_and_leaves_no_successful_looking_run(override, tmp_path, capsys):
    from medgpt.training.run import main

    cfg = compose(f"output_root={tmp_path}", "logger=none", override)
    with pytest.raises(SystemExit) as exit_info:
        main(cfg)
    assert exit_info.value.code != 0
    assert "the global batch is 0" in capsys.readouterr().err
    (run,) = (tmp_path / "runs" / "sft-tiny-cpu").iterdir()
    assert json.loads((run / "metrics.json").read_text())["status"] == "failed"
    assert not (run / "final").exists() and not (run / "checkpoints").exists()


def test_model_path_that_is_not_a_model(tmp_path):
    from medgpt.errors import UserError
    from medgpt.modeling.load import load_tokenizer

    (tmp_path / "notes").mkdir()
    (tmp_path / "notes" / "readme.txt").write_text("not a model")
    with pytest.raises(UserError, match="is a folder but holds no model \\(no config.json"):
        load_tokenizer(compose(f"model.path={tmp_path / 'notes'}").model)
    with pytest.raises(UserError, match="model.path=./no/such/model: no such folder"):
        load_tokenizer(compose("model.path=./no/such/model").model)


def test_user_error_on_the_command_line_prints_the_message_alone(tmp_path):
    result = run_cli(f"output_root={tmp_path}", "logger=none", f"data.train_files=[{tmp_path}/missing.jsonl]",
                     env={"OMP_NUM_THREADS": "1"})
    assert result.returncode == 2
    assert f"error: data.train_files: no such file '{tmp_path}/missing.jsonl'" in result.stderr
    assert "Traceback" not in result.stdout + result.stderr
    (run,) = (tmp_path / "runs" / "sft-tiny-cpu").iterdir()
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["status"] == "failed" and metrics["user_error"] is True
    assert not (run / "final").exists()


# --- issue 19.6: more bad inputs; each stops the run (exit status 2, one line, no traceback) before a model loads ---

def run_main(tmp_path, capsys, *overrides):
    """medgpt.training.run.main as `python train.py <overrides>` runs it: (exit status, stderr)."""
    from medgpt.training.run import main

    cfg = compose(f"output_root={tmp_path}", "logger=none", "data.eval_split=0", *overrides)
    with pytest.raises(SystemExit) as exit_info:
        main(cfg)
    err = capsys.readouterr().err
    assert "Traceback" not in err
    return exit_info.value.code, err


@pytest.mark.parametrize("encoding, problem", [
    ("utf-16", "the file is UTF-16-LE-encoded; data files must be UTF-8. Fix: convert it: iconv -f UTF-16-LE"),
    ("latin-1", ":1: the file is not UTF-8 (byte 0xe8 at column"),
])
def test_data_file_not_utf8_names_file_and_encoding(tmp_path, capsys, encoding, problem):
    chat = {"messages": [{"role": "user", "content": "Une fièvre?"}, {"role": "assistant", "content": "Repos."}]}
    path = tmp_path / "chats.jsonl"
    path.write_bytes((json.dumps(chat, ensure_ascii=False) + "\n").encode(encoding))
    status, err = run_main(tmp_path, capsys, f"data.train_files=[{path}]")
    assert status == 2 and f"error: {path}" in err and problem in err


@pytest.mark.parametrize("top", ['"just a string"', "42", "null"])
def test_json_file_whose_top_level_is_not_a_list_or_object(tmp_path, capsys, top):
    path = tmp_path / "data.json"
    path.write_text(top)
    status, err = run_main(tmp_path, capsys, f"data.train_files=[{path}]")
    assert status == 2
    assert f"error: {path}: the top level of the JSON file is a" in err and "not a list of records" in err


def test_duplicate_keys_warn_naming_the_line(tmp_path, caplog):
    import logging

    line = '{"messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}], "messages": ' \
           '[{"role": "user", "content": "q2"}, {"role": "assistant", "content": "a2"}]}'
    path = write(tmp_path, [CHAT, line])
    with caplog.at_level(logging.WARNING, logger="medgpt.data.loading"):
        train, _ = load(path)
    assert f"{path}:2: duplicate key(s) 'messages' in the record: the last value of each is used" in caplog.text
    assert train.rows[1]["messages"][0]["content"] == "q2"  # as json.loads: the last value wins


def test_a_50mb_record_is_refused_without_reading_it_into_memory(tmp_path, capsys):
    import tracemalloc

    from medgpt.data.loading import read_records

    path = tmp_path / "huge.jsonl"
    with open(path, "w", encoding="utf-8") as f:
        f.write(json.dumps(CHAT) + "\n")
        f.write('{"messages": [{"role": "user", "content": "')
        for _ in range(50):
            f.write("x" * 2 ** 20)
        f.write('"}]}\n')
        f.write(json.dumps(CHAT) + "\n")
    tracemalloc.start()
    records = list(read_records(path))
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert [n for n, _ in records] == [1, 2, 3]
    assert peak < 40 * 2 ** 20  # about twice the 16 MB bound (readline's buffers), never the 50 MB line itself
    status, err = run_main(tmp_path, capsys, f"data.train_files=[{path}]")
    assert status == 2 and f"error: {path}:2: the record is 50.0 MB, more than data.max_record_mb=16" in err
    assert "raise data.max_record_mb" in err


def test_every_sample_over_max_length_with_no_loss_left_is_refused_before_training(tmp_path, capsys):
    path = write(tmp_path, [CHAT, CHAT])
    status, err = run_main(tmp_path, capsys, f"data.train_files=[{path}]", "data.max_length=8")
    assert status == 2
    assert ("error: train split: all 2 record(s) were dropped (2 no answer token left after truncation; "
            "data.max_length=8, data.overlong=truncate): nothing to train on. Fix: raise data.max_length") in err
    (run,) = (tmp_path / "runs" / "sft-tiny-cpu").iterdir()
    assert json.loads((run / "metrics.json").read_text())["status"] == "failed"  # never a 0-step "completed" run


def test_model_path_that_is_a_file(tmp_path, capsys):
    weights = tmp_path / "model.safetensors"
    weights.write_bytes(b"not a folder")
    status, err = run_main(tmp_path, capsys, f"model.path={weights}")
    assert status == 2
    assert f"error: model.path={weights} is a file, not a model folder" in err and f"model.path={tmp_path}" in err
