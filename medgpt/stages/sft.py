"""Supervised fine-tuning: chat template applied, loss on assistant tokens only (every assistant turn).

    python train.py stage=sft data.train_files=[../shared/data/medicalgpt-samples/medical_sft_1K_format.jsonl]
"""
import functools

from datasets import Dataset

from medgpt.data.tokenize import tokenize_chats
from medgpt.modeling.hardware import zero_stage
from medgpt.training.batching import collate_without_causal_padding_mask, plan_batches
from medgpt.training.losses import labelled_positions_loss, supports_labelled_loss

MODEL_KIND = "causal"
CACHEABLE = True  # prepare() only tokenizes: medgpt.data.cache may reuse its output


def prepare(rows, tokenizer, cfg, settings):
    """Chats -> assistant-labelled token ids of at most settings.max_length (the trainer's max_length too)."""
    columns, counts = tokenize_chats(rows, tokenizer, settings.max_length, cfg.data.overlong,
                                     settings.source("max_length"))
    return Dataset.from_dict(columns), counts


def trainer_class():
    """SFTTrainer whose training batches follow stage.batching (medgpt.training.batching), and whose loss projects only
    labelled positions (medgpt.training.losses) unless stage.fused_lm_head asks for TRL's fused head (tiled: less memory,
    slower at moderate batch sizes, as measured in docs/performance.md)."""
    from torch.utils.data import DataLoader
    from trl import SFTTrainer

    class BatchedSFTTrainer(SFTTrainer):
        batch_plan = None
        fused_lm_head = True
        labelled_loss = False

        def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
            if self.fused_lm_head or not self.labelled_loss or return_outputs:  # TRL's own loss (evaluation too)
                return super().compute_loss(model, inputs, return_outputs, num_items_in_batch)
            loss = labelled_positions_loss(model, inputs, num_items_in_batch)
            if self.args.average_tokens_across_devices and num_items_in_batch is not None:
                loss = loss * self.accelerator.num_processes  # as Trainer.compute_loss: DDP averages the gradients
            return loss

        def get_train_dataloader(self):
            if self.batch_plan is None:
                return super().get_train_dataloader()
            dataset = self._remove_unused_columns(self.train_dataset, description="training")
            collate = functools.partial(collate_without_causal_padding_mask, self.data_collator)
            return self.accelerator.prepare(DataLoader(
                dataset, batch_sampler=self.batch_plan, collate_fn=collate,
                num_workers=self.args.dataloader_num_workers, pin_memory=self.args.dataloader_pin_memory))

    return BatchedSFTTrainer


def build_trainer(cfg, model, tokenizer, args, train_dataset, eval_dataset, callbacks, settings):

    trainer = trainer_class()(model=model, args=args, train_dataset=train_dataset, eval_dataset=eval_dataset,
                              processing_class=tokenizer, callbacks=callbacks)
    trainer.fused_lm_head = cfg.stage.fused_lm_head
    # ZeRO-3 gathers lm_head's weight only inside its own forward call, which this loss does not make; a compiled
    # model (stage.args.torch_compile) would run this loss's body calls uncompiled
    trainer.labelled_loss = (supports_labelled_loss(model) and zero_stage(cfg.hardware.deepspeed) != 3
                             and not args.torch_compile)
    if not args.packing and cfg.stage.batching != "random":
        lengths = [len(ids) for ids in trainer.train_dataset["input_ids"]]
        trainer.batch_plan = plan_batches(cfg.stage.batching, lengths, settings.per_device_train_batch_size,
                                          settings.tokens_per_batch, settings.data_seed)
    return trainer
