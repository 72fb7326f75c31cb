"""Data at scale: the dataset zoo configs, data.mix, data.streaming, the tokenization cache and
`medgpt data inspect`. All on local data (the hub is replaced by local stand-ins)."""
from __future__ import annotations

import json
import threading
from pathlib import Path

import pytest
from omegaconf import OmegaConf

from conftest import CONF, DEMO, SAMPLES, compose, run_cli, train_in_process
from medgpt.config import resolve
from medgpt.errors import UserError

DATA_FILES = sorted((CONF / "data").glob("*.yaml"))
ZOO = [p.stem for p in DATA_FILES if "hub_name:" in p.read_text()]
# a value for each column our formats read, by our column name
STAND_IN = {"text": "Aspirin thins the blood.", "instruction": "What is aspirin?", "input": "", "output": "A drug.",
            "conversations": [{"from": "human", "value": "What is aspirin?"}, {"from": "gpt", "value": "A drug."}],
            "question": "What is aspirin?", "response_chosen": "A drug.", "response_rejected": "A fruit.",
            "prompt": "What is aspirin?", "chosen": "A drug.", "rejected": "A fruit.",
            "plain_text": "[Human]: What is aspirin?<eoh> [MOSS]: A drug.<eoa>\n"}
# formats that read the same columns as transcripts: their values, by format then our column name
STAND_IN_BY_FORMAT = {"hh_preference": {"prompt": "\n\nHuman: What is aspirin?\n\nAssistant:", "chosen": " A drug.",
                                        "rejected": " A fruit."},
                      "belle_multiturn": {"instruction": "Human:What is aspirin?\nAssistant:"}}


def declared_stages(path: Path):
    """The stages a data config declares (`stages:`), else the <stage> of a <stage>_demo.yaml, else sft."""
    stages = OmegaConf.load(path).get("stages") or []
    if not stages and path.stem.endswith("_demo"):
        stages = [path.stem[:-len("_demo")]]
    return list(stages) or ["sft"]


@pytest.mark.parametrize("path", DATA_FILES, ids=lambda p: p.stem)
def test_every_data_config_composes_with_its_stage(path):
    from medgpt.data.formats import FORMATS

    stages = [s for s in declared_stages(path) if (CONF / "stage" / f"{s}.yaml").exists()]
    if not stages:
        pytest.skip(f"{path.stem} serves {declared_stages(path)}: no such stage config in this checkout")
    cfg = compose(f"stage={stages[0]}", f"data={path.stem}")
    assert cfg.data.name == path.stem
    evaluates_only = cfg.stage.name == "eval" and cfg.data.eval_files
    assert cfg.data.train_files or cfg.data.hub_name or cfg.data.mix or evaluates_only
    if cfg.data.hub_name:  # zoo entries name their format, and their columns give that format's keys
        assert cfg.data.format in FORMATS
        assert FORMATS[cfg.data.format].keys <= set(cfg.data.columns.values())
        assert cfg.data.stages


def hub_sources(cfg) -> set:
    """The hub datasets a config reads: hub_name, or the repos of its hf://datasets/<owner>/<name>/ data files."""
    files = OmegaConf.to_container(cfg.hub_data_files) if cfg.get("hub_data_files") else []
    groups = files.values() if isinstance(files, dict) else [files]  # {split: files} or files
    files = [f for group in groups for f in ([group] if isinstance(group, str) else group)]
    repos = {"/".join(f.split("/")[3:5]) for f in files if f.startswith("hf://datasets/")}
    return repos or {cfg.hub_name}


def test_zoo_covers_the_medicalgpt_datasets():
    hub_names = set().union(*(hub_sources(OmegaConf.load(CONF / "data" / f"{name}.yaml")) for name in ZOO))
    for expected in ("shibing624/medical", "shibing624/huatuo_medical_qa_sharegpt", "shibing624/sharegpt_gpt4",
                     "BelleGroup/train_0.5M_CN", "BelleGroup/train_1M_CN", "shibing624/alpaca-zh",
                     "Chinese-Vicuna/guanaco_belle_merge_v1.0", "FreedomIntelligence/ShareGPT-CN",
                     "Linly-AI/Chinese-pretraining-dataset", "pleisto/wikipedia-cn-20230720-filtered",
                     "shibing624/DPO-En-Zh-20k-Preference", "tasksource/oasst1_pairwise_rlhf_reward",
                     "Dahoas/full-hh-rlhf", "liyucheng/zhihu_rlhf_3k", "fnlp/moss-002-sft-data"):
        assert expected in hub_names
    # shibing624/medical is a script dataset: its pretrain/finetune/reward folders are read as json files, per split
    folders = {OmegaConf.load(CONF / "data" / f"{n}.yaml").hub_data_files.train.split("/")[5]
               for n in ZOO if n.startswith("shibing624_medical")}
    assert folders == {"pretrain", "finetune", "reward"}


@pytest.mark.parametrize("name", ZOO)
def test_zoo_config_loads_through_the_hub_path(name, monkeypatch):
    """datasets.load_dataset replaced by a local stand-in holding the source columns the config maps."""
    import datasets

    from medgpt.data import load_data
    from medgpt.data.formats import FORMATS
    from medgpt.data.mix import data_config

    cfg = data_config(name)
    values = STAND_IN | STAND_IN_BY_FORMAT.get(cfg.format, {})
    record = {source: values[ours] for source, ours in cfg.columns.items()} | {"lang": "zh"}
    calls = []

    def fake_load_dataset(path, subset=None, split=None, streaming=False, data_files=None):
        calls.append((path, subset, split, streaming, data_files))
        return datasets.Dataset.from_list([record] * 3)

    monkeypatch.setattr(datasets, "load_dataset", fake_load_dataset)
    stage = OmegaConf.create({"name": cfg.stages[0], "formats": [cfg.format]})
    train, _ = load_data(cfg, stage)
    data_files = OmegaConf.to_container(cfg.hub_data_files) if cfg.hub_data_files else None
    assert calls == [(cfg.hub_name, cfg.hub_subset, cfg.hub_split, False, data_files)]
    assert len(train.rows) == 3 and dict(train.formats) == {cfg.format: 3}
    row, kind = train.rows[0], FORMATS[cfg.format].kind
    if kind == "text":
        assert row == {"text": STAND_IN["text"]}
    elif kind == "chat":
        assert row["messages"][-1] == {"role": "assistant", "content": "A drug."}
    else:
        assert row["chosen"][0]["content"] == "A drug." and row["rejected"][0]["content"] == "A fruit."


def test_real_load_dataset_reads_a_local_folder_as_hub_name(tmp_path):
    from medgpt.data import load_data
    from medgpt.data.mix import data_config

    folder = tmp_path / "alpaca_like"
    folder.mkdir()
    (folder / "train.jsonl").write_text("\n".join(json.dumps({"instruction": f"q{i}", "input": "", "output": f"a{i}"})
                                                  for i in range(4)))
    cfg = data_config("shibing624_alpaca-zh")
    cfg.hub_name = str(folder)
    train, _ = load_data(cfg, compose("stage=sft").stage)
    assert [r["messages"][-1]["content"] for r in train.rows] == ["a0", "a1", "a2", "a3"]


def test_medical_config_reads_the_split_named_by_hub_split_from_json_files(tmp_path):
    """shibing624/medical is a script dataset: its configs give the json builder one file per split (real loader)."""
    from medgpt.data import load_data
    from medgpt.data.mix import data_config

    files = {}
    for split in ("train", "validation", "test"):
        files[split] = str(tmp_path / f"{split}.json")
        Path(files[split]).write_text("\n".join(json.dumps(
            {"question": f"{split} q{i}", "response_chosen": "good", "response_rejected": "bad"}) for i in range(2)))
    cfg = data_config("shibing624_medical_reward")
    assert cfg.hub_name == "json" and set(cfg.hub_data_files) == set(files)
    cfg.hub_data_files, cfg.hub_split = files, "validation"
    train, _ = load_data(cfg, compose("stage=rm").stage)
    assert [r["prompt"][-1]["content"] for r in train.rows] == ["validation q0", "validation q1"]


def test_moss_config_reads_chosen_json_array_files_of_a_local_hub_folder(tmp_path):
    """Like fnlp/moss-002-sft-data: JSON-array files per category; hub_data_files picks the Chinese ones."""
    from medgpt.data import load_data
    from medgpt.data.mix import data_config

    def dialogue(lang, i):
        return {"plain_text": f"[Human]: {lang} q{i}<eoh> [MOSS]: {lang} a{i}<eoa>", "prefix": "MOSS"}

    for name, lang in [("zh_helpfulness.json", "zh"), ("zh_honesty.json", "zh"), ("en_harmlessness.json", "en")]:
        (tmp_path / name).write_text(json.dumps([dialogue(lang, i) for i in range(3)], ensure_ascii=False))
    cfg = data_config("fnlp_moss-002-sft-data")
    cfg.hub_name = str(tmp_path)
    train, _ = load_data(cfg, compose("stage=sft").stage)
    answers = sorted(r["messages"][-1]["content"] for r in train.rows)
    assert answers == sorted(f"zh a{i}" for i in range(3) for _ in range(2)) and dict(train.formats) == {"moss": 6}
    cfg.hub_data_files = None
    assert len(load_data(cfg, compose("stage=sft").stage)[0].rows) == 9


def test_data_for_another_stage_is_refused():
    from medgpt.data import load_data

    cfg = compose("stage=pt", "data=medical_sft")
    with pytest.raises(UserError, match="serves stage\\(s\\) sft, not stage=pt"):
        load_data(cfg.data, cfg.stage)


# ---------------------------------------------------------------- mixing

def write_chats(path: Path, tag: str, n: int) -> Path:
    path.write_text("\n".join(json.dumps({"instruction": f"{tag} question {i}", "output": f"{tag} answer {i}"})
                              for i in range(n)) + "\n")
    return path


def mixed(tmp_path, mix, seed=0, **data):
    from medgpt.data import load_data

    cfg = compose("stage=sft", "data=sft_demo", "data.eval_split=0", "data.train_files=[]")
    cfg.data.mix = mix
    for key, value in data.items():
        cfg.data[key] = value
    return load_data(cfg.data, cfg.stage, seed=seed)[0]


def test_mix_by_weight_is_seeded_and_counts_sources(tmp_path):
    a, b = write_chats(tmp_path / "a.jsonl", "A", 10), write_chats(tmp_path / "b.jsonl", "B", 30)
    mix = [{"name": str(a), "weight": 3}, {"name": str(b), "weight": 1}]
    records = mixed(tmp_path, mix, max_samples=40)
    assert dict(records.sources) == {str(a): 30, str(b): 10}  # A repeated 3x to reach its share
    tags = [r["messages"][0]["content"][0] for r in records.rows]
    assert tags.count("A") == 30 and tags.count("B") == 10
    assert len({r["messages"][0]["content"] for r in records.rows if r["messages"][0]["content"][0] == "A"}) == 10
    again, other = mixed(tmp_path, mix, max_samples=40), mixed(tmp_path, mix, seed=1, max_samples=40)
    assert again.rows == records.rows and other.rows != records.rows


def test_mix_concatenates_without_weights_and_takes_data_configs(tmp_path):
    a = write_chats(tmp_path / "a.jsonl", "A", 5)
    records = mixed(tmp_path, [str(a), {"name": "sft_demo", "max_samples": 7}])
    assert dict(records.sources) == {str(a): 5, "sft_demo": 7}
    assert records.rows[0]["messages"][0]["content"] == "A question 0" and len(records.rows) == 12
    with pytest.raises(UserError, match="weight to every entry"):
        mixed(tmp_path, [{"name": str(a), "weight": 1}, "sft_demo"])
    with pytest.raises(UserError, match="serves stage"):
        mixed(tmp_path, ["medical_pt"])


@pytest.mark.samples
def test_mixed_data_report_counts_each_source(tiny_tokenizer, caplog, cache_dir):
    """The report medgpt.training.run writes into metrics.json carries the realised count of each source."""
    from medgpt.training.run import prepare_datasets
    from medgpt.stages import sft

    cfg = compose("data=medical_sft_mix", "data.max_samples=40", "data.eval_split=0", "model.max_length=256")
    with caplog.at_level("INFO", logger="medgpt.data.mix"):
        train, _, report = prepare_datasets(cfg, sft, tiny_tokenizer, settings(cfg))
    assert report["mix"] == {"sft_demo": 10, "medical_sft": 30} and report["train_records"] == 40
    assert len(train) == 40 - report.get("dropped_no_loss", 0)
    assert "'sft_demo': 10, 'medical_sft': 30" in caplog.text


# ---------------------------------------------------------------- streaming

@pytest.mark.samples
def test_streaming_pt_trains_and_packs_like_the_in_memory_path(tmp_path, tiny_tokenizer):
    from medgpt.data.loading import read_records
    from medgpt.data.streaming import pack_blocks
    from medgpt.data.tokenize import tokenize_blocks

    texts = [r["text"] for _, r in read_records(SAMPLES / "en_article_tail500.txt")]
    streamed = list(pack_blocks(iter(texts), tiny_tokenizer, 128))
    in_memory = tokenize_blocks([{"text": t} for t in texts], tiny_tokenizer, 128)[0]["input_ids"]
    assert streamed == in_memory and all(len(b) == 128 for b in streamed)

    run_dir, metrics = train_in_process(tmp_path, "stage=pt", "data=medical_pt", "data.streaming=true",
                                        "data.block_size=64", "stage.args.max_steps=3")
    assert metrics["streaming"] is True and metrics["global_step"] == 3
    assert metrics["tokens_seen"] == 3 * 4 * 64  # 3 steps x batch 4 x full blocks


def test_streaming_sft_trains_with_the_default_batching(tmp_path):
    """stage.batching=token_budget (the default) plans over a whole dataset: a streamed one is read in order."""
    assert compose("stage=sft").stage.batching != "random"
    _, metrics = train_in_process(tmp_path, "data.streaming=true", "data.eval_split=0", "stage.args.max_steps=2")
    assert metrics["streaming"] is True and metrics["global_step"] == 2


def test_streaming_without_max_steps_or_with_bad_data_fails_before_the_model(tmp_path, monkeypatch):
    import medgpt.training.run

    monkeypatch.setattr(medgpt.training.run, "load_model", lambda *a, **k: pytest.fail("model loaded"))
    with pytest.raises(UserError, match="needs stage.args.max_steps"):
        train_in_process(tmp_path, "stage=pt", "data=pt_demo", "data.streaming=true")
    with pytest.raises(UserError, match="does not accept"):  # chats streamed into pt: caught on the first record
        train_in_process(tmp_path, "stage=pt", "data=sft_demo", "data.streaming=true", "data.eval_split=0",
                         "stage.args.max_steps=2")


def test_streaming_sft_reads_a_hub_stream(monkeypatch, tiny_tokenizer):
    import datasets

    from medgpt.data.streaming import streaming_dataset

    def fake_load_dataset(path, subset=None, split=None, streaming=False, data_files=None):
        assert streaming and path == "json" and split == "train"
        assert data_files["train"] == "hf://datasets/shibing624/medical/finetune/train_zh_0.json"
        return datasets.IterableDataset.from_generator(
            lambda: ({"instruction": f"q{i}", "input": "", "output": f"answer {i}"} for i in range(10)))

    monkeypatch.setattr(datasets, "load_dataset", fake_load_dataset)
    cfg = compose("stage=sft", "data=shibing624_medical_finetune", "data.streaming=true", "stage.args.max_steps=2")
    samples = list(streaming_dataset(cfg, tiny_tokenizer, settings(cfg)))
    assert len(samples) == 10
    answers = sorted(tiny_tokenizer.decode([t for t in s["labels"] if t != -100]) for s in samples)
    assert answers[0].startswith("answer 0")


# ---------------------------------------------------------------- cache

@pytest.fixture
def cache_dir(tmp_path, monkeypatch):
    monkeypatch.setenv("MEDGPT_DATA_CACHE", str(tmp_path / "cache"))
    return tmp_path / "cache"


def settings(cfg):
    """The run's settings (medgpt.config.resolve), as on a CPU."""
    return resolve(cfg, {"cuda": False, "bf16": False})


def sft_rows(n=40):
    from medgpt.data.loading import load_split

    return load_split([SAMPLES / "medical_sft_1K_format.jsonl"], accepted=["sharegpt"], max_samples=n).rows


@pytest.mark.samples
def test_cache_reuses_and_invalidates(cache_dir, tiny_tokenizer):
    import copy

    from medgpt.data.cache import cached_prepare
    from medgpt.stages import sft

    cfg, rows = compose("stage=sft", "model.max_length=256"), sft_rows()
    first, counts = cached_prepare(sft, rows, tiny_tokenizer, cfg, settings(cfg))
    assert counts["data_cache"] == "miss"
    again, counts_again = cached_prepare(sft, rows, tiny_tokenizer, cfg, settings(cfg))
    assert counts_again["data_cache"] == "hit" and again["input_ids"] == first["input_ids"]
    assert counts_again["truncated"] == counts["truncated"] > 0  # counts come back from the cache too

    cfg_lr = compose("stage=sft", "model.max_length=256", "stage.args.learning_rate=1e-3")
    cached = cached_prepare(sft, rows, tiny_tokenizer, cfg_lr, settings(cfg_lr))
    assert cached[1]["data_cache"] == "hit"  # not a data option

    changed = copy.deepcopy(rows)
    changed[5]["messages"][-1]["content"] += " (edited)"
    assert cached_prepare(sft, changed, tiny_tokenizer, cfg, settings(cfg))[1]["data_cache"] == "miss"

    from medgpt.modeling.templates import load_template

    other_template = copy.copy(tiny_tokenizer)
    other_template.chat_template = load_template("chatml")
    assert other_template.chat_template != tiny_tokenizer.chat_template
    assert cached_prepare(sft, rows, other_template, cfg, settings(cfg))[1]["data_cache"] == "miss"

    cfg_len = compose("stage=sft", "model.max_length=128")
    assert cached_prepare(sft, rows, tiny_tokenizer, cfg_len, settings(cfg_len))[1]["data_cache"] == "miss"
    assert len([p for p in cache_dir.iterdir() if p.is_dir()]) == 4

    cfg_off = compose("stage=sft", "model.max_length=256", "data.cache=false")
    assert cached_prepare(sft, rows, tiny_tokenizer, cfg_off, settings(cfg_off))[1]["data_cache"] == "off"


@pytest.mark.samples
def test_concurrent_processes_prepare_once(cache_dir, tiny_tokenizer, monkeypatch):
    from medgpt.data.cache import cached_prepare
    from medgpt.stages import sft

    calls, real_prepare = [], sft.prepare

    def counting_prepare(rows, tokenizer, cfg, run_settings):
        calls.append(1)
        return real_prepare(rows, tokenizer, cfg, run_settings)

    monkeypatch.setattr(sft, "prepare", counting_prepare)
    cfg, rows = compose("stage=sft", "model.max_length=256"), sft_rows(20)
    results = [None, None]

    def rank(i):
        results[i] = cached_prepare(sft, rows, tiny_tokenizer, cfg, settings(cfg))

    threads = [threading.Thread(target=rank, args=(i,)) for i in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(calls) == 1
    assert sorted(r[1]["data_cache"] for r in results) == ["hit", "miss"]
    assert results[0][0]["input_ids"] == results[1][0]["input_ids"]


@pytest.mark.samples
def test_num_proc_workers_give_the_same_tokens(tiny_tokenizer):
    from medgpt.data.cache import prepare_parallel
    from medgpt.stages import sft

    rows = sft_rows(30)
    cfg_one = compose("stage=sft", "model.max_length=256")
    cfg_two = compose("stage=sft", "model.max_length=256", "data.num_proc=2")
    one = prepare_parallel(sft, rows, tiny_tokenizer, cfg_one, settings(cfg_one))
    two = prepare_parallel(sft, rows, tiny_tokenizer, cfg_two, settings(cfg_two))
    assert one[0]["input_ids"] == two[0]["input_ids"] and one[1] == two[1]


# ---------------------------------------------------------------- inspect

@pytest.mark.samples
def test_inspect_reports_lengths_loss_share_and_marked_examples(capsys):
    from medgpt.tools.inspect import LOSS_CLOSE, LOSS_OPEN, main

    stats = main(["inspect", "data=medical_sft", "model=tiny", "data.max_samples=60", "data.eval_split=0"])
    out = capsys.readouterr().out
    assert stats["train_records"] == 60 and "loss share" in out and "p95" in out
    pct = stats["length_percentiles"]
    assert pct["p50"] <= pct["p90"] <= pct["p99"] <= pct["max"]
    assert stats["over_max_length"] > 0  # the sample has answers longer than the tiny model's 512 tokens
    assert 0.3 < stats["loss_token_share"] < 1
    first_answer = sft_rows(1)[0]["messages"][-1]["content"]
    assert f"{LOSS_OPEN}{first_answer}" in stats["examples"][0] and stats["examples"][0].count(LOSS_OPEN) == 1
    assert "user" in stats["examples"][0].split(LOSS_OPEN)[0]  # the prompt is outside the marked span


def test_inspect_marks_only_the_chosen_answer_of_a_multi_turn_preference(tmp_path):
    """DPO trains on the completion: the assistant turns inside the prompt carry no loss, and inspect says so."""
    from medgpt.tools.inspect import LOSS_CLOSE, LOSS_OPEN, compose as inspect_compose, inspect_data

    pair = {"prompt": "\n\nHuman: fever?\n\nAssistant: Rest.\n\nHuman: and a child?\n\nAssistant:",
            "chosen": " Ask a doctor.", "rejected": " Aspirin."}
    (tmp_path / "hh.jsonl").write_text(json.dumps(pair))
    stats = inspect_data(inspect_compose(["stage=dpo", f"data.train_files=[{tmp_path / 'hh.jsonl'}]",
                                          "data.format=hh_preference", "data.eval_split=0"]))
    example = stats["examples"][0]
    assert example.count(LOSS_OPEN) == 1 and f"{LOSS_OPEN}Ask a doctor." in example and "Rest." in example
    assert example.index("Rest.") < example.index(LOSS_OPEN) and example.rstrip().endswith(LOSS_CLOSE)


@pytest.mark.samples
def test_inspect_picks_the_data_stage_and_runs_as_a_module():
    from medgpt.tools.inspect import LOSS_OPEN, compose as inspect_compose, inspect_data

    stats = inspect_data(inspect_compose(["data=medical_pt"]))
    assert stats["stage"] == "pt" and stats["loss_token_share"] == 1.0 and stats["pt_blocks"] > 0

    done = run_cli("data", "inspect", "data=medical_sft", "model=tiny", "data.max_samples=20", module="medgpt")
    assert done.returncode == 0, done.stderr[-2000:]
    assert "loss share" in done.stdout and LOSS_OPEN in done.stdout
