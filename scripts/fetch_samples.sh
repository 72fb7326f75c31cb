#!/usr/bin/env bash
# MedicalGPT's sample data, which the tests, the medical_* data configs and the benchmarks read, into
# ../shared/data/medicalgpt-samples (the folder beside the checkout) or $MEDGPT_SAMPLES: five files of the data/
# folder of github.com/shibing624/MedicalGPT and its LICENSE (Apache-2.0), at one pinned commit, each checked
# against its SHA-256. Files already there with the right checksum are kept.
#   bash scripts/fetch_samples.sh && pytest
#   MEDGPT_SAMPLES=/data/medicalgpt-samples bash scripts/fetch_samples.sh     # elsewhere (export it for pytest too)
#   MEDGPT_SAMPLES_URL=https://<mirror>/MedicalGPT/<commit> bash scripts/fetch_samples.sh   # through a mirror
set -euo pipefail
cd "$(dirname "$0")/.."
COMMIT=2f1008cfa49cbba69ff6f138c3b5e2fb0646bdc7
BASE=${MEDGPT_SAMPLES_URL:-https://raw.githubusercontent.com/shibing624/MedicalGPT/$COMMIT}
DEST=${MEDGPT_SAMPLES:-../shared/data/medicalgpt-samples}

# name here, path in MedicalGPT, SHA-256
FILES="
medical_sft_1K_format.jsonl data/sft/medical_sft_1K_format.jsonl b51b1cf9788dd39c79b440511d5a17a47bf21df9b4cb66d2fb54a10684065aec
dpo_zh_500.jsonl            data/reward/dpo_zh_500.jsonl         03d19b829de4e1b5ece9baf956b6b3e92ebd8341fe2d18ab5fce51cf9d7cda16
grpo_sample.jsonl           data/grpo/sample.jsonl               db42be7cf7c468ed7f07d0e4ed69737d8be437536080d81aafaa536a9d955b42
en_article_tail500.txt      data/pretrain/en_article_tail500.txt 38609a3db389e2bf5d64f33a905f76776b8a55915cb473fddf28262299ceb314
medical_corpus.txt          data/rag/medical_corpus.txt          e028d8252d4516dc20aa81c5d1a05a727a65a770accae28173ff9f8bebf3df84
LICENSE                     LICENSE                              c71d239df91726fc519c6eb72d318ec65820627232b2f796219e87dcf35d0ab4
"

mkdir -p "$DEST"
while read -r name path sha; do
    [ -n "$name" ] || continue
    if [ -f "$DEST/$name" ] && echo "$sha  $DEST/$name" | sha256sum -c --status; then
        echo "kept    $name"
        continue
    fi
    curl -fsSL --retry 3 -o "$DEST/$name.part" "$BASE/$path" || {
        rm -f "$DEST/$name.part"
        echo "error: could not download $BASE/$path. Fix: check the network (or set MEDGPT_SAMPLES_URL to a mirror)" >&2
        exit 1; }
    echo "$sha  $DEST/$name.part" | sha256sum -c --status || {
        rm -f "$DEST/$name.part"
        echo "error: $BASE/$path is not the file of commit $COMMIT (SHA-256 differs). Fix: check MEDGPT_SAMPLES_URL" >&2
        exit 1; }
    mv "$DEST/$name.part" "$DEST/$name"
    echo "fetched $name"
done <<< "$FILES"

[ -f "$DEST/README.md" ] || cat > "$DEST/README.md" <<EOF  # an existing README (e.g. CI's folder) is left alone
# MedicalGPT sample data

Real third-party data, copied unchanged from the public MedicalGPT repository
(shibing624/MedicalGPT, commit $COMMIT, \`data/\` folder, Apache-2.0, see LICENSE here),
by medgpt's scripts/fetch_samples.sh. It is the data that the seed project's own scripts train on, so it is
the reference for the formats that medgpt must read without conversion.

| file | from | records | format | stage |
| --- | --- | --- | --- | --- |
| en_article_tail500.txt | data/pretrain/en_article_tail500.txt | 500 lines | plain English text (a book tail), lines to be joined into passages | pt |
| medical_sft_1K_format.jsonl | data/sft/medical_sft_1K_format.jsonl | 1000 | ShareGPT: \`{"conversations":[{"from":"human"/"gpt"/"system","value":...}]}\` | sft |
| dpo_zh_500.jsonl | data/reward/dpo_zh_500.jsonl | 500 | \`{"conversations":[...prompt turns...], "chosen": str, "rejected": str}\` | rm, dpo, orpo, kto, simpo |
| grpo_sample.jsonl | data/grpo/sample.jsonl | 32 | \`{"question": str, "answer": str}\` | grpo, ppo (prompts) |
| medical_corpus.txt | data/rag/medical_corpus.txt | 87 lines | JSON per line \`{"问": str, "答": str}\` (medical Q&A knowledge base) | rag |

Use: tests and benchmarks read these from \`../shared/data/medicalgpt-samples/\` (the folder beside the project
checkout) or \`\$MEDGPT_SAMPLES\`. Do not copy these files into the project: the project ships its own small
sample data, written by us.
EOF
echo "MedicalGPT samples (commit ${COMMIT:0:7}) in $DEST"
