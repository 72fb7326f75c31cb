"""The chunked loss equals the library's loss and gradients, and trains through the real trainer."""
import torch

from conftest import train_in_process
from medgpt.losses import chunked_lm_loss


def test_chunked_loss_matches_full_logits_loss_and_grads(tiny_dir):
    from transformers import AutoModelForCausalLM

    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_pretrained(tiny_dir, dtype=torch.float32)
    ids = torch.randint(5, 1000, (2, 12))
    labels = ids.clone()
    labels[:, :5] = -100  # prompt tokens carry no loss
    reference = model(input_ids=ids, labels=labels).loss
    reference.backward()
    ref_grad = model.model.layers[0].mlp.up_proj.weight.grad.clone()
    model.zero_grad()
    hidden = model.model(input_ids=ids).last_hidden_state
    loss = chunked_lm_loss(hidden, model.lm_head.weight, labels, chunk_size=5)
    loss.backward()
    torch.testing.assert_close(loss, reference, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(model.model.layers[0].mlp.up_proj.weight.grad, ref_grad, atol=1e-6, rtol=1e-4)


def test_sft_with_chunked_loss_trains(tmp_path):
    _, metrics = train_in_process(tmp_path, "stage.chunked_loss=true", "stage.args.max_steps=3",
                                  "hardware=lora", "stage.args.learning_rate=1e-3")
    assert metrics["status"] == "completed" and metrics["train_loss"] > 0
