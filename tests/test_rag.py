"""RAG: document reading (.txt/.md/.pdf/.jsonl), chunking with overlap, BM25 retrieval quality (hit@3 on
hand-written questions over the MedicalGPT sample corpus) and the CLI's cited answer."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from conftest import SAMPLES, read_jsonl

CORPUS = SAMPLES / "medical_corpus.txt"
QUESTIONS = Path(__file__).parent / "data" / "rag_questions.jsonl"


@pytest.fixture(scope="module")
def corpus_index():
    from medgpt.inference.rag import build_index, load_chunks

    chunks = load_chunks([str(CORPUS)])
    return build_index(chunks), chunks


@pytest.mark.samples
def test_hit_at_3_on_hand_written_questions(corpus_index):
    from medgpt.inference.rag import retrieve

    index, chunks = corpus_index
    questions = read_jsonl(QUESTIONS)
    assert len(questions) == 10
    ranks = []
    for q in questions:
        sources = [chunk.source.split(" part")[0] for chunk, _ in retrieve(index, chunks, q["question"], k=3)]
        ranks.append(sources.index(q["source"]) + 1 if q["source"] in sources else None)
    hit_at_3 = sum(r is not None for r in ranks) / len(ranks)
    print(f"RAG hit@3 = {hit_at_3:.2f}, hit@1 = {ranks.count(1) / len(ranks):.2f}, ranks {ranks}")
    assert hit_at_3 >= 0.9, ranks


def test_chinese_is_indexed_as_character_bigrams():
    from medgpt.inference.rag import tokens

    assert tokens("甲沟炎 Diabetes-2型") == ["甲沟", "沟炎", "diabetes", "2", "型"]


def test_chunks_overlap_and_cover_the_text():
    from medgpt.inference.rag import split_text

    text = "".join(f"第{i}句话讲一个医学事实。" for i in range(60))
    chunks = split_text(text, size=100, overlap=30)
    assert len(chunks) > 5 and all(len(c) <= 100 for c in chunks)
    for before, after in zip(chunks, chunks[1:]):
        assert before[-20:] in after  # neighbours share text, so a fact cut at a border is whole in one chunk
    assert chunks[0] == text[:len(chunks[0])] and text.endswith(chunks[-1])
    assert all(c.endswith("。") for c in chunks)  # windows end at sentence breaks


def test_reads_a_folder_of_txt_md_pdf_jsonl(tmp_path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from medgpt.errors import DataError
    from medgpt.inference.rag import build_index, load_chunks, retrieve

    (tmp_path / "notes.md").write_text("# Asthma\nInhaled corticosteroids control asthma.\n", encoding="utf-8")
    (tmp_path / "plain.txt").write_text("Aspirin thins the blood.\n", encoding="utf-8")
    (tmp_path / "qa.jsonl").write_text(json.dumps({"问": "痛风吃什么药", "答": "秋水仙碱"}, ensure_ascii=False) + "\n",
                                       encoding="utf-8")
    fig = plt.figure()
    fig.text(0.1, 0.5, "Metformin is the first-line drug for type 2 diabetes.")
    fig.savefig(tmp_path / "guide.pdf")
    plt.close(fig)
    chunks = load_chunks([str(tmp_path)])
    assert sorted(c.source for c in chunks) == ["guide.pdf#page1", "notes.md", "plain.txt", "qa.jsonl:1"]
    index = build_index(chunks)
    assert retrieve(index, chunks, "drug for diabetes", 1)[0][0].source == "guide.pdf#page1"
    assert retrieve(index, chunks, "痛风怎么治", 1)[0][0].source == "qa.jsonl:1"
    (tmp_path / "broken.jsonl").write_text('{"a": "x"}\nnot json\n', encoding="utf-8")
    with pytest.raises(DataError, match="broken.jsonl:2"):
        load_chunks([str(tmp_path)])


@pytest.mark.samples
def test_prompt_numbers_sources_and_answer_lists_those_cited(corpus_index):
    from medgpt.inference.rag import cited, rag_messages, retrieve

    index, chunks = corpus_index
    hits = retrieve(index, chunks, "膺窗穴在哪里？", 3)
    system = rag_messages("膺窗穴在哪里？", hits)[0]["content"]
    assert len(hits) >= 2 and "[1] (medical_corpus.txt:5)" in system and "第3肋间隙" in system
    assert f"[{len(hits)}] (" in system
    assert cited(f"在第3肋间隙 [1]，见 [{len(hits)}]。[9]", hits) == [1, len(hits)]  # [9] was never given
    assert cited("没有引用", hits) == list(range(1, len(hits) + 1))


@pytest.mark.samples
def test_rag_cli_answers_with_sources(sft_run, capsys):
    from medgpt.inference.rag import main

    assert main([str(sft_run[0]), "--docs", str(CORPUS), "--question", "膺窗这个穴位在身体的哪个位置？",
                 "--max-new-tokens", "8", "--temperature", "0", "--repetition-penalty", "3"]) == 0
    out = capsys.readouterr().out
    answer, sources = out.split("Sources:\n")
    assert answer.strip()
    assert sources.splitlines()[0] == "[1] medical_corpus.txt:5"
