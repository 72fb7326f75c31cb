"""The recipes of docs/architecture.md, followed as written: a stage, a model, a data format and a hardware method
added without editing medgpt (a config folder on Hydra's search path, a module on sys.path), each composed and
trained a few steps. The stage contract (medgpt/training/stage.py) holds for every conf/stage/*.yaml."""
import json
import textwrap

import pytest

from conftest import CONF, compose, train_in_process
from medgpt.data import formats
from medgpt.errors import UserError
from medgpt.training.stage import PROTOCOLS, load_stage, missing

STEPS = ("stage.args.max_steps=2", "data.eval_split=0")


def write(path, text: str):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(textwrap.dedent(text).lstrip(), encoding="utf-8")
    return path


@pytest.mark.parametrize("name", sorted(p.stem for p in (CONF / "stage").glob("*.yaml")))
def test_every_stage_config_names_a_module_that_keeps_its_contract(name):
    stage_cfg = compose(f"stage={name}").stage
    module = load_stage(stage_cfg)
    assert missing(module, PROTOCOLS[stage_cfg.kind]) == []


def test_a_stage_that_breaks_the_contract_is_refused_naming_what_is_wrong(tmp_path, monkeypatch):
    write(tmp_path / "half_stage.py", '''
        MODEL_KIND = "causal"
        CACHEABLE = False

        def prepare(rows, tokenizer):
            return None, {}
    ''')
    monkeypatch.syspath_prepend(str(tmp_path))
    stage_cfg = compose("stage.module=half_stage").stage
    with pytest.raises(UserError, match=r"does not implement TrainingStage.*build_trainer \(missing\).*"
                                        r"prepare\(rows, tokenizer\) \(expected prepare\(rows, tokenizer, cfg, "
                                        r"settings\)\)"):
        load_stage(stage_cfg)


def test_recipe_a_stage(tmp_path, monkeypatch):
    """docs/architecture.md, "Add a stage": a module with the TrainingStage members + conf/stage/<name>.yaml."""
    write(tmp_path / "code" / "first_turn_sft.py", '''
        """SFT on each conversation's first exchange only (system prompt, first question, first answer)."""
        from medgpt.stages import sft

        MODEL_KIND = "causal"
        CACHEABLE = False


        def prepare(rows, tokenizer, cfg, settings):
            dataset, counts = sft.prepare([{**row, "messages": first_exchange(row["messages"])} for row in rows],
                                          tokenizer, cfg, settings)
            return dataset, {**counts, "first_exchanges": len(rows)}  # counts land in metrics.json


        def first_exchange(messages):
            answer = next(i for i, m in enumerate(messages) if m["role"] == "assistant")
            return messages[:answer + 1]


        def build_trainer(cfg, model, tokenizer, args, train_dataset, eval_dataset, callbacks, settings):
            return sft.build_trainer(cfg, model, tokenizer, args, train_dataset, eval_dataset, callbacks, settings)
    ''')
    write(tmp_path / "conf" / "stage" / "first_turn_sft.yaml", '''
        # python train.py --config-dir <this folder's parent> stage=first_turn_sft data=sft_demo
        name: first_turn_sft
        module: first_turn_sft
        formats: [sharegpt, messages]
        args:
          _target_: trl.SFTConfig
          per_device_train_batch_size: 2
          learning_rate: 1.0e-4
    ''')
    monkeypatch.syspath_prepend(str(tmp_path / "code"))
    run_dir, metrics = train_in_process(tmp_path, f"hydra.searchpath=[file://{tmp_path / 'conf'}]",
                                        "stage=first_turn_sft", "data=sft_demo", *STEPS)
    assert metrics["first_exchanges"] == metrics["train_records"] > 0 and metrics["global_step"] == 2
    assert metrics["train_loss"] > 0 and (run_dir / "final" / "medgpt.json").is_file()


def test_recipe_a_model(tmp_path):
    """"Add a model": conf/model/<name>.yaml on a family (its template and LoRA targets); the family's own file
    when the family is new."""
    write(tmp_path / "conf" / "model" / "family" / "my_qwen.yaml", '''
        # Family base (not a model): python train.py --config-dir <conf> model=my-tiny --cfg job
        family: my_qwen
        template: qwen
        trust_remote_code: false
        dtype: auto
        lora_target_modules: [q_proj, v_proj]
    ''')
    write(tmp_path / "conf" / "model" / "my-tiny.yaml", '''
        # python train.py --config-dir <conf> model=my-tiny hardware=lora
        defaults:
          - family/my_qwen@_here_
          - _self_

        name: my-tiny
        path: tiny
        max_length: 256
    ''')
    run_dir, metrics = train_in_process(tmp_path, f"hydra.searchpath=[file://{tmp_path / 'conf'}]", "model=my-tiny",
                                        "hardware=lora", *STEPS)
    adapter = json.loads((run_dir / "final" / "adapter_config.json").read_text())
    assert sorted(adapter["target_modules"]) == ["q_proj", "v_proj"]  # the family's LoRA targets
    assert metrics["model"] == "my-tiny" and metrics["global_step"] == 2


def test_recipe_a_data_format(tmp_path, monkeypatch):
    """"Add a data format": a converter + a Format entry in medgpt/data/formats.py, its name in a stage's formats."""
    def question_answer(record: dict) -> dict:
        return {"messages": formats.check_turns([{"role": "user", "content": record["q"]},
                                                 {"role": "assistant", "content": record["a"]}])}

    monkeypatch.setitem(formats.FORMATS, "qa_pair", formats.Format(
        "qa_pair", "chat", frozenset({"q", "a"}), question_answer, '{"q": "...", "a": "..."}'))
    data = tmp_path / "pairs.jsonl"
    data.write_text("\n".join(json.dumps({"q": f"症状{i}怎么办？", "a": f"多休息，第{i}天复诊。"}, ensure_ascii=False)
                              for i in range(12)), encoding="utf-8")
    _, metrics = train_in_process(tmp_path, f"data.train_files=[{data}]", "stage.formats=[sharegpt,qa_pair]", *STEPS)
    assert metrics["formats"] == {"qa_pair": 12} and metrics["train_records"] == 12


def test_recipe_a_hardware_method(tmp_path):
    """"Add a hardware method": conf/hardware/<name>.yaml with a method (full | freeze | lora | dora) and its knobs."""
    write(tmp_path / "conf" / "hardware" / "lora_small.yaml", '''
        # python train.py --config-dir <conf> hardware=lora_small
        name: lora_small
        method: lora
        precision: auto
        lora_r: 4
        lora_alpha: 8
        lora_dropout: 0.0
        lora_target_modules: [q_proj, k_proj]
        gradient_checkpointing: false
    ''')
    run_dir, metrics = train_in_process(tmp_path, f"hydra.searchpath=[file://{tmp_path / 'conf'}]",
                                        "hardware=lora_small", *STEPS)
    adapter = json.loads((run_dir / "final" / "adapter_config.json").read_text())
    assert adapter["r"] == 4 and sorted(adapter["target_modules"]) == ["k_proj", "q_proj"]
    assert metrics["hardware"] == "lora_small"
