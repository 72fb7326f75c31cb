"""stage=kto: unpaired data as is, preference pairs split into desirable/undesirable examples."""
import pytest

from conftest import SAMPLES, train_in_process


def test_pairs_split_into_desirable_and_undesirable():
    from medgpt.stages.kto import unpaired_rows

    prompt = [{"role": "user", "content": "q"}]
    good, bad = [{"role": "assistant", "content": "good"}], [{"role": "assistant", "content": "bad"}]
    rows = unpaired_rows([{"prompt": prompt, "chosen": good, "rejected": bad},
                          {"prompt": prompt, "completion": bad, "label": False}])
    assert [(r["completion"][0]["content"], r["label"]) for r in rows] == [("good", True), ("bad", False),
                                                                          ("bad", False)]


@pytest.mark.samples
def test_kto_trains_on_medicalgpt_pairs_final_reloads(tmp_path):
    from medgpt.modeling.load import load_for_inference

    run_dir, metrics = train_in_process(
        tmp_path, "stage=kto", f"data.train_files=[{SAMPLES / 'dpo_zh_500.jsonl'}]", "data.max_samples=8",
        "data.eval_split=0", "stage.args.max_steps=2", "stage.args.max_length=256")
    assert metrics["desirable"] == 8 and metrics["undesirable"] == 8 and metrics["split_pairs"] == 8
    assert metrics["global_step"] == 2
    assert load_for_inference(str(run_dir))[2]["stage"] == "kto"


def test_kto_on_unpaired_demo_data(tmp_path):
    run_dir, metrics = train_in_process(tmp_path, "stage=kto", "data.eval_split=0", "stage.args.max_steps=2")
    assert metrics["formats"] == {"unpaired": 96} and metrics["split_pairs"] == 0
    assert metrics["status"] == "completed"


def test_kto_needs_both_labels(tmp_path):
    import json

    from medgpt.errors import UserError

    data = tmp_path / "good_only.jsonl"
    data.write_text("\n".join(json.dumps({"prompt": f"q{i}", "completion": "a", "label": True}) for i in range(4)))
    with pytest.raises(UserError, match="both desirable"):
        train_in_process(tmp_path, "stage=kto", f"data.train_files=[{data}]", "data.eval_split=0")
