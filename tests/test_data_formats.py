"""Pure converters, format detection, and reading the real MedicalGPT samples without conversion."""
import json

import pytest

from conftest import SAMPLES
from medgpt.data.formats import RecordError, convert, detect
from medgpt.data.loading import expand_files, load_split

CHAT_FORMATS = ["sharegpt", "messages", "alpaca"]


def test_sharegpt_roles_and_synonyms():
    row = convert("sharegpt", {"conversations": [
        {"from": "system", "value": "be kind"}, {"from": "human", "value": "hi"}, {"from": "gpt", "value": "hello"},
        {"from": "user", "value": "more?"}, {"from": "assistant", "value": "sure"}]})
    assert [m["role"] for m in row["messages"]] == ["system", "user", "assistant", "user", "assistant"]
    assert row["messages"][2]["content"] == "hello"


def test_openai_messages_with_separate_system():
    row = convert("messages", {"system": "S", "messages": [{"role": "user", "content": "q"},
                                                           {"role": "assistant", "content": "a"}]})
    assert row["messages"][0] == {"role": "system", "content": "S"}


def test_alpaca_with_input_and_history():
    row = convert("alpaca", {"instruction": "Explain", "input": "fever", "output": "It is heat.",
                             "history": [["first q", "first a"]]})
    assert row["messages"] == [{"role": "user", "content": "first q"}, {"role": "assistant", "content": "first a"},
                               {"role": "user", "content": "Explain\nfever"},
                               {"role": "assistant", "content": "It is heat."}]


def test_moss_plain_text_dialogue_to_turns():
    dialogue = ("[Human]: 发烧怎么办？<eoh> [MOSS]: 多喝水，\n必要时就医。<eoa> "
                "[Human]: What about aspirin? <eoh>\n[MOSS]: Ask a doctor first.<eoa>\n")
    row = convert("moss", {"plain_text": dialogue, "prefix": "MOSS-002"})
    assert row["messages"] == [
        {"role": "user", "content": "发烧怎么办？"}, {"role": "assistant", "content": "多喝水，\n必要时就医。"},
        {"role": "user", "content": "What about aspirin?"}, {"role": "assistant", "content": "Ask a doctor first."}]
    assert detect({"plain_text": dialogue}) == "moss"
    with_system = convert("moss", {"plain_text": dialogue, "system": "You are MOSS."})  # data.columns={prefix: system}
    assert with_system["messages"][0] == {"role": "system", "content": "You are MOSS."}


@pytest.mark.parametrize("dialogue, problem", [
    ("Hello [Human]: hi<eoh> [MOSS]: yo<eoa>", "before any"),
    ("[Human]: hi<eoh> [Human]: again<eoh> [MOSS]: yo<eoa>", "out of order"),
    ("[Human]: hi<eoh> [MOSS]: <eoa> [Human]: more?<eoh> [MOSS]: yo<eoa>", "empty assistant turn"),
    ("no speaker marks at all", "before any"),
])
def test_bad_moss_dialogues_say_what_is_wrong(dialogue, problem):
    with pytest.raises(RecordError, match=problem):
        convert("moss", {"plain_text": dialogue})


@pytest.mark.parametrize("dialogue, trimmed", [
    ("[Human]: hi<eoh> [MOSS]: yo<eoa> [Human]: more?<eoh>", 1),  # a trailing question: cut, not fatal
    ("[Human]: hi<eoh>", None),  # no answer at all: the record is dropped
    ("[Human]: hi<eoh> [MOSS]: <eoa>", None),  # an empty last answer is no answer
])
def test_unanswered_moss_dialogues_are_trimmed_or_dropped(dialogue, trimmed):
    from medgpt.data.formats import Unanswered, answered

    messages = convert("moss", {"plain_text": dialogue})["messages"]
    if trimmed is None:
        with pytest.raises(Unanswered, match="no assistant answer"):
            answered(messages)
    else:
        kept, cut = answered(messages)
        assert cut == trimmed and kept[-1] == {"role": "assistant", "content": "yo"}


HH_PROMPT = "\n\nHuman: I have a fever.\n\nAssistant: How high is it?\n\nHuman: 39 degrees.\n\nAssistant:"


def test_hh_transcript_prompt_becomes_alternating_turns():
    """Dahoas/full-hh-rlhf, rm-static, static-hh: answers start with a space after the open 'Assistant:' cue."""
    pair = convert("hh_preference", {"prompt": HH_PROMPT, "chosen": " See a doctor today.", "rejected": " Ignore it.",
                                     "response": " See a doctor today."})
    assert pair["prompt"] == [{"role": "user", "content": "I have a fever."},
                              {"role": "assistant", "content": "How high is it?"},
                              {"role": "user", "content": "39 degrees."}]
    assert pair["chosen"] == [{"role": "assistant", "content": "See a doctor today."}]
    assert pair["rejected"] == [{"role": "assistant", "content": "Ignore it."}]


def test_hh_answers_with_their_own_assistant_mark_and_oasst_history():
    yitingxie = convert("hh_preference", {"prompt": "\n\nHuman: Hi\n\n", "chosen": "Assistant: Hello!",
                                          "rejected": "Assistant:  Go away."})  # prompt without the open cue
    assert yitingxie["prompt"] == [{"role": "user", "content": "Hi"}]
    assert [yitingxie["chosen"][0]["content"], yitingxie["rejected"][0]["content"]] == ["Hello!", "Go away."]
    oasst = convert("hh_preference", {"prompt": "prompter: Is aspirin safe?\nassistant: Mostly.\nprompter: For kids?",
                                      "chosen": "Not under 16.", "rejected": "Yes.", "lang": "en"})
    assert [m["role"] for m in oasst["prompt"]] == ["user", "assistant", "user"]
    assert oasst["prompt"][-1]["content"] == "For kids?"
    with_system = convert("hh_preference", {"prompt": HH_PROMPT, "chosen": "a", "rejected": "b", "system": "S"})
    assert with_system["prompt"][0] == {"role": "system", "content": "S"}


def test_hh_and_belle_are_used_only_when_declared():
    """They share their keys with trl_preference / alpaca, which detection keeps choosing."""
    assert detect({"prompt": HH_PROMPT, "chosen": "a", "rejected": "b"}) == "trl_preference"
    assert detect({"instruction": "Human:hi\nAssistant:", "input": "", "output": "yo"}) == "alpaca"
    assert detect({"prompt": "q", "chosen": "a", "rejected": "b"}, ["hh_preference", "trl_preference"]) \
        == "trl_preference"


@pytest.mark.parametrize("prompt, chosen, problem", [
    ("What is aspirin?", "A drug.", "before any speaker mark"),  # a plain prompt: trl_preference
    ("", "A drug.", "has no 'Human:' turn"),
    ("\n\nHuman: q\n\nAssistant: a", "b", "ends with an assistant turn"),
    ("\n\nHuman: q\n\nHuman: again\n\nAssistant:", "a", "out of order"),
    ("\n\nHuman: q\n\nAssistant:", " a\n\nHuman: more?\n\nAssistant: b", "'chosen' holds another turn"),
    ("\n\nHuman: q\n\nAssistant:", "Assistant:   ", "'chosen' is empty"),
    ("\n\nHuman: q\n\nAssistant: \n\nHuman: q2\n\nAssistant:", "a", "empty assistant turn"),
])
def test_bad_hh_transcripts_say_what_is_wrong(prompt, chosen, problem):
    with pytest.raises(RecordError) as e:
        convert("hh_preference", {"prompt": prompt, "chosen": chosen, "rejected": "other"})
    assert problem in e.value.problem and e.value.fix
    if problem == "before any speaker mark":
        assert "data.format=trl_preference" in e.value.fix


def test_belle_multiturn_instruction_transcript_to_turns():
    row = convert("belle_multiturn", {"instruction": "Human:发烧了\nAssistant:多少度？\nHuman:39度\nAssistant:",
                                      "input": "", "output": "请尽快就医。"})
    assert row["messages"] == [{"role": "user", "content": "发烧了"}, {"role": "assistant", "content": "多少度？"},
                               {"role": "user", "content": "39度"}, {"role": "assistant", "content": "请尽快就医。"}]
    with pytest.raises(RecordError, match="before any speaker mark") as e:
        convert("belle_multiturn", {"instruction": "写一首诗", "input": "", "output": "好的"})
    assert "data.format=alpaca" in e.value.fix


def test_text_and_preference_formats():
    assert convert("text", {"text": "abc"}) == {"text": "abc"}
    pair = convert("sharegpt_preference", {"conversations": [{"from": "human", "value": "q"}],
                                           "chosen": "good", "rejected": "bad"})
    assert pair["prompt"] == [{"role": "user", "content": "q"}]
    assert pair["chosen"] == [{"role": "assistant", "content": "good"}]
    qa = convert("qa_preference", {"system": "", "history": [["a", "b"]], "question": "q",
                                   "response_chosen": "c", "response_rejected": "r"})
    assert [m["role"] for m in qa["prompt"]] == ["user", "assistant", "user"]


@pytest.mark.parametrize("record, problem", [
    ({"conversations": [{"from": "doctor", "value": "x"}]}, "unknown role 'doctor'"),
    ({"conversations": [{"from": "human", "value": "q"}, {"from": "gpt", "value": "  "},
                        {"from": "human", "value": "q2"}, {"from": "gpt", "value": "a"}]}, "empty assistant"),
    ({"conversations": [{"from": "gpt", "value": "a"}, {"from": "human", "value": "q"}]}, "out of order"),
    ({"conversations": [{"from": "human", "value": "q"}, {"from": "observation", "value": "r"}]}, "out of order"),
    ({"conversations": [{"from": "human", "value": "q"}, {"from": "gpt", "value": "a"},
                        {"from": "observation", "value": "r"}]}, "out of order"),  # a result without a call
    ({"conversations": [{"from": "human", "value": "q"}, {"from": "function_call", "value": "{\"name\": "}]},
     "not valid JSON"),
    ({"conversations": [{"from": "human"}]}, "needs keys 'from' and 'value'"),
])
def test_bad_chat_records_say_what_is_wrong(record, problem):
    with pytest.raises(RecordError) as e:
        convert("sharegpt", record)
    assert problem in e.value.problem and e.value.fix


def test_identical_preference_pair_rejected():
    with pytest.raises(RecordError, match="identical"):
        convert("trl_preference", {"prompt": "q", "chosen": "same", "rejected": "same"})


def test_detection_prefers_the_most_specific_and_reports_ambiguity():
    assert detect({"conversations": [], "chosen": "", "rejected": ""}) == "sharegpt_preference"
    assert detect({"instruction": "", "input": "", "output": ""}) == "alpaca"
    with pytest.raises(RecordError, match="several formats: .*trl_preference.*unpaired|unpaired.*trl_preference"):
        detect({"prompt": "", "chosen": "", "rejected": "", "completion": "", "label": True})
    with pytest.raises(RecordError, match="no known format"):
        detect({"foo": 1})


@pytest.mark.samples
@pytest.mark.parametrize("name, accepted, kind_key, count", [
    ("medical_sft_1K_format.jsonl", CHAT_FORMATS, "messages", 1000),
    ("dpo_zh_500.jsonl", ["sharegpt_preference", "trl_preference", "qa_preference"], "chosen", 500),
    ("grpo_sample.jsonl", ["prompt", "question"], "prompt", 32),
    ("en_article_tail500.txt", ["text"], "text", None),
])
def test_real_samples_read_without_conversion(name, accepted, kind_key, count):
    records = load_split(expand_files([str(SAMPLES / name)]), accepted=accepted)
    assert not records.skipped
    assert all(kind_key in row for row in records.rows)
    if count:
        assert len(records.rows) == count


def _write(tmp_path, lines, name="data.jsonl"):
    path = tmp_path / name
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


GOOD = json.dumps({"conversations": [{"from": "human", "value": "q"}, {"from": "gpt", "value": "a"}]})


@pytest.mark.parametrize("bad_line, message", [
    ('{"conversations": [', "invalid JSON"),
    (json.dumps({"conversations": [{"from": "nurse", "value": "q"}]}), "unknown role 'nurse'"),
    (json.dumps({"conversations": [{"from": "human", "value": "q"}, {"from": "gpt", "value": ""},
                                   {"from": "human", "value": "q2"}, {"from": "gpt", "value": "a"}]}),
     "empty assistant turn"),
    (json.dumps({"conversations": [{"from": "gpt", "value": "a"}, {"from": "human", "value": "q"}]}),
     "out of order"),
    (json.dumps({"instruction": "q"}), "missing key(s) ['conversations']"),  # another shape mid-file
])
def test_bad_record_names_file_line_and_fix(tmp_path, bad_line, message):
    from medgpt.errors import DataError

    path = _write(tmp_path, [GOOD, GOOD, bad_line, GOOD])
    with pytest.raises(DataError) as e:
        load_split([path], accepted=CHAT_FORMATS)
    text = str(e.value)
    assert f"{path}:3" in text and message in text and "Fix:" in text and "on_bad_record=skip" in text


def test_skip_counts_and_reports_bad_records(tmp_path, caplog):
    path = _write(tmp_path, [GOOD, "{oops", json.dumps({"conversations": [{"from": "x", "value": "q"}]}), GOOD])
    records = load_split([path], accepted=CHAT_FORMATS, on_bad_record="skip")
    assert len(records.rows) == 2
    assert sum(records.skipped.values()) == 2
    assert any(":2: invalid JSON" in s for s in records.first_skipped)
    assert "skipped 2 bad record(s)" in caplog.text


def test_stage_given_wrong_shape_lists_accepted_formats(tmp_path):
    from medgpt.errors import UserError

    path = _write(tmp_path, [GOOD])
    with pytest.raises(UserError, match="accepts: sharegpt_preference, trl_preference"):
        load_split([path], accepted=["sharegpt_preference", "trl_preference"], stage="stage=dpo")


def test_missing_empty_and_unmatched_files(tmp_path):
    from medgpt.errors import DataError, UserError

    with pytest.raises(UserError, match="no such file"):
        expand_files([str(tmp_path / "nope.jsonl")])
    with pytest.raises(UserError, match="matches no file"):
        expand_files([str(tmp_path / "*.jsonl")])
    (tmp_path / "empty.jsonl").write_text("")
    with pytest.raises(DataError, match="empty.jsonl: the file is empty"):
        expand_files([str(tmp_path / "empty.jsonl")])


def test_folders_globs_json_and_parquet(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    rows = [{"instruction": f"q{i}", "input": "", "output": f"a{i}"} for i in range(3)]
    (tmp_path / "d").mkdir()
    (tmp_path / "d" / "a.json").write_text(json.dumps(rows))
    pq.write_table(pa.Table.from_pylist(rows), tmp_path / "d" / "b.parquet")
    files = expand_files([str(tmp_path / "d")])
    assert [f.suffix for f in files] == [".json", ".parquet"]
    records = load_split(files, accepted=CHAT_FORMATS, max_samples=5)
    assert len(records.rows) == 5 and records.formats["alpaca"] == 5
    assert expand_files([str(tmp_path / "d" / "*.json")]) == [tmp_path / "d" / "a.json"]


def test_column_mapping_and_forced_format(tmp_path):
    path = _write(tmp_path, [json.dumps({"问": "发烧怎么办", "答": "多喝水"})])
    records = load_split([path], accepted=["question", "alpaca"], columns={"问": "instruction", "答": "output"})
    assert records.rows[0]["messages"][1]["content"] == "多喝水"


# --- real-world chats (issue 17.5): unanswered last turns and answerless records never stop a run ---

MULTI_TURN = [
    {"conversations": [{"from": "human", "value": "发烧怎么办？"},
                       {"from": "gpt", "value": "多喝水，必要时就医。"},
                       {"from": "human", "value": "吃什么药？"}, {"from": "gpt", "value": "可以用退烧药。"}]},
    {"conversations": [{"from": "human", "value": "头疼怎么办？"}, {"from": "gpt", "value": "先休息。"},
                       {"from": "human", "value": "继续"}]},  # the seed's samples end like this
    {"conversations": [{"from": "human", "value": "咳嗽"}]},  # no answer at all
    {"conversations": [{"from": "system", "value": "你是医生。"}, {"from": "human", "value": "失眠？"},
                       {"from": "gpt", "value": ""}]},  # an empty answer is no answer
    {"conversations": [{"from": "human", "value": "腹泻怎么办？"}, {"from": "gpt", "value": "补液。"},
                       {"from": "human", "value": "还有呢？"}, {"from": "human", "value": "继续"}]},
]


def test_multi_turn_sharegpt_with_unanswered_turns_trains_and_reports_counts(tmp_path, capsys):
    from conftest import train_in_process
    from medgpt.tools.inspect import main as inspect_main

    data = _write(tmp_path, [json.dumps(r, ensure_ascii=False) for r in MULTI_TURN])
    overrides = [f"data.train_files=[{data}]", "data.eval_split=0"]
    run_dir, metrics = train_in_process(tmp_path, *overrides, "stage.args.max_steps=1")
    assert metrics["status"] == "completed" and metrics["train_records"] == 3
    assert metrics["trimmed_trailing_turns"] == 2 and metrics["dropped_no_answer"] == 2
    assert json.loads((run_dir / "metrics.json").read_text())["dropped_no_answer"] == 2
    stats = inspect_main(["inspect", *overrides])
    assert stats["cleaned"] == {"trimmed_trailing_turns": 2, "dropped_no_answer": 2}
    assert "cleaned        {'trimmed_trailing_turns': 2, 'dropped_no_answer': 2}" in capsys.readouterr().out


def test_malformed_chat_still_stops_unless_skipped(tmp_path):
    from medgpt.data import load_data
    from conftest import compose
    from medgpt.errors import DataError

    out_of_order = {"conversations": [{"from": "human", "value": "q"}, {"from": "human", "value": "q2"},
                                      {"from": "gpt", "value": "a"}]}
    data = _write(tmp_path, [json.dumps(r, ensure_ascii=False) for r in MULTI_TURN + [out_of_order]])
    cfg = compose(f"data.train_files=[{data}]", "data.eval_split=0")
    with pytest.raises(DataError, match=f"{data}:6: turn 2 is 'user' but an assistant turn was expected"):
        load_data(cfg.data, cfg.stage)
    skipping = compose(f"data.train_files=[{data}]", "data.eval_split=0", "data.on_bad_record=skip")
    train, _ = load_data(skipping.data, skipping.stage)
    assert len(train.rows) == 3 and sum(train.skipped.values()) == 1 and train.cleaned["dropped_no_answer"] == 2


def test_eval_split_that_loses_every_pair_does_not_kill_the_run(tmp_path, caplog):
    """stage=rm: the one eval pair is longer than max_length; the train split is fine, so the run trains without
    evaluation and says which split lost how many."""
    import logging

    from conftest import train_in_process

    pair = {"prompt": "Is fever dangerous?", "chosen": "Often not; rest and drink.", "rejected": "Always."}
    train = _write(tmp_path, [json.dumps(dict(pair, rejected=f"Always {i}.")) for i in range(4)], "train.jsonl")
    long = _write(tmp_path, [json.dumps(dict(pair, prompt="fever " * 200))], "eval.jsonl")
    with caplog.at_level(logging.WARNING):
        _, metrics = train_in_process(tmp_path, "stage=rm", f"data.train_files=[{train}]",
                                      f"data.eval_files=[{long}]", "stage.args.max_length=64",
                                      "stage.args.max_steps=1", "stage.args.eval_strategy=steps",
                                      "stage.args.eval_steps=1")
    assert metrics["status"] == "completed" and metrics["global_step"] == 1 and "eval_loss" not in metrics
    assert metrics["eval_skipped"].startswith("eval split: all 1 record(s) were dropped (1 longer than max_length")
    assert "training without evaluation" in caplog.text
    assert "no eval data left: stage.args.eval_strategy=no for this run" in caplog.text  # else the trainer refuses


def test_reasoning_content_is_kept_through_every_chat_and_preference_format():
    think = "Fever with a stiff neck needs ruling out meningitis."
    sharegpt = convert("sharegpt", {"conversations": [{"from": "human", "value": "q"},
                                                      {"from": "gpt", "value": "a", "reasoning_content": think}]})
    messages = convert("messages", {"messages": [{"role": "user", "content": "q"},
                                                 {"role": "assistant", "content": "a", "reasoning": think}]})
    alpaca = convert("alpaca", {"instruction": "q", "output": "a", "reasoning_content": think})
    for row in (sharegpt, messages, alpaca):
        assert row["messages"][-1] == {"role": "assistant", "content": "a", "reasoning_content": think}
    pair = convert("trl_preference", {"prompt": "q", "rejected": "b", "chosen": [
        {"role": "assistant", "content": "a", "reasoning_content": think}]})
    assert pair["chosen"] == [{"role": "assistant", "content": "a", "reasoning_content": think}]
    inline = convert("sharegpt", {"conversations": [{"from": "human", "value": "q"},
                                                    {"from": "gpt", "value": f"<think>{think}</think>a"}]})
    assert inline["messages"][-1]["content"] == f"<think>{think}</think>a"  # the template splits it
