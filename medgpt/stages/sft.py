"""Supervised fine-tuning: chat template applied, loss on assistant tokens only (every assistant turn).

    python train.py stage=sft data.train_files=[../shared/data/medicalgpt-samples/medical_sft_1K_format.jsonl]
"""
import functools
import logging
from typing import Optional

from datasets import Dataset, IterableDataset

from medgpt.data.tokenize import template_kwargs, tokenize_chats
from medgpt.training.batching import collate_without_causal_padding_mask, plan_batches, planned_loader
from medgpt.training.guard import guarded
from medgpt.training.losses import labelled_loss_applies, labelled_positions_loss

log = logging.getLogger(__name__)
MODEL_KIND = "causal"
CACHEABLE = True  # prepare() only tokenizes: medgpt.data.cache may reuse its output


def prepare(rows, tokenizer, cfg, settings):
    """Chats -> assistant-labelled token ids of at most settings.max_length (the trainer's max_length too)."""
    columns, counts = tokenize_chats(rows, tokenizer, settings.max_length, cfg.data.overlong,
                                     settings.source("max_length"), template_kwargs(settings))
    return Dataset.from_dict(columns), counts


SFT_COLUMNS = ("input_ids", "labels", "seq_lengths")  # what TRL's SFT collator reads from a tokenized dataset


def trainer_class():
    """SFTTrainer whose training batches follow stage.batching (medgpt.training.batching), whose loss projects only
    labelled positions, a chunk of rows at a time (medgpt.training.losses, medgpt.training.fused_loss: no
    full-vocabulary logits for the whole batch), unless stage.fused_lm_head asks for TRL's fused head (tiled, slower on
    CPU, as measured in docs/performance.md), and whose losses the guard checks."""
    from trl import SFTTrainer

    class BatchedSFTTrainer(guarded(SFTTrainer)):
        def __init__(self, *args, fused_lm_head: bool = True, labelled_loss: bool = False, batching: str = "random",
                     tokens_per_batch: Optional[int] = None, batch_seed: int = 0, **kwargs):
            super().__init__(*args, **kwargs)
            self.fused_lm_head, self.labelled_loss = fused_lm_head, labelled_loss
            self.batch_plan = None
            if isinstance(self.train_dataset, IterableDataset) and batching != "random":
                log.info("stage.batching=%s plans over the whole dataset; a streamed one is read in order", batching)
            elif not self.args.packing and batching != "random":  # planned on the dataset as TRL prepared it
                lengths = [len(ids) for ids in self.train_dataset["input_ids"]]
                self.batch_plan = plan_batches(batching, lengths, self.args.per_device_train_batch_size,
                                               tokens_per_batch, batch_seed)

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
            dataset = self.train_dataset
            if self.args.remove_unused_columns:  # as the trainer's own loader: only what the collator reads
                dataset = dataset.select_columns([c for c in dataset.column_names if c in SFT_COLUMNS])
            collate = functools.partial(collate_without_causal_padding_mask, self.data_collator)
            return planned_loader(self, dataset, self.batch_plan, collate)

    return BatchedSFTTrainer


def build_trainer(cfg, model, tokenizer, args, train_dataset, eval_dataset, callbacks, settings):
    labelled_loss = labelled_loss_applies(model, cfg.hardware.deepspeed, args.torch_compile)
    return trainer_class()(model=model, args=args, train_dataset=train_dataset, eval_dataset=eval_dataset,
                           processing_class=tokenizer, callbacks=callbacks, fused_lm_head=cfg.stage.fused_lm_head,
                           labelled_loss=labelled_loss, batching=cfg.stage.batching,
                           tokens_per_batch=settings.tokens_per_batch, batch_seed=settings.data_seed)
