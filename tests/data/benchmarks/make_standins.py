"""Writes the benchmark stand-ins: tiny files in each benchmark's exact hub schema (columns, nesting, types,
file layout and config names), with questions written for the tests (not taken from the datasets). Laid out as a
local mirror of the hub (eval.hub_root=tests/data/benchmarks): <dataset id>/<the repo's files>.

    python tests/data/benchmarks/make_standins.py      # rewrites the files next to this script

Answer keys are chosen so a model that always answers the first option ("A", or "yes") scores a known accuracy;
tests/test_eval_suite.py states those numbers.
"""
import json
from pathlib import Path

HERE = Path(__file__).resolve().parent


def write_json(path, rows):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(rows, ensure_ascii=False, indent=1) + "\n", encoding="utf-8")


def write_jsonl(path, rows):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")


def readme(path, configs):
    """A dataset card whose YAML declares the configs and their files, as the hub's parquet repos do."""
    lines = ["---", "configs:"]
    for name, splits in configs.items():
        lines += [f"- config_name: {name}", "  data_files:"]
        lines += [f"  - split: {split}\n    path: {file}" for split, file in splits.items()]
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(lines + ["---", "Stand-in written for medgpt's tests; not the real dataset.", ""]),
                    encoding="utf-8")


def cmb():
    # FreedomIntelligence/CMB, CMB-Exam/CMB-val/CMB-val-merge.json: a JSON list; option keyed A-F, unused slots null
    def q(question, options, answer, kind="单项选择题"):
        return {"exam_type": "医师考试", "exam_class": "执业医师", "exam_subject": "临床执业医师", "question": question,
                "answer": answer, "question_type": kind,
                "option": {**{k: None for k in "ABCDEF"}, **options}, "explanation": ""}
    rows = [
        q("成人正常空腹血糖的上限约为", {"A": "6.1 mmol/L", "B": "11.1 mmol/L", "C": "3.9 mmol/L", "D": "7.8 mmol/L"}, "A"),
        q("治疗过敏性休克首选的药物是", {"A": "地塞米松", "B": "肾上腺素", "C": "多巴胺", "D": "葡萄糖酸钙", "E": "阿托品"}, "B"),
        q("下列属于铁缺乏实验室表现的是", {"A": "血清铁蛋白降低", "B": "总铁结合力降低", "C": "红细胞增大", "D": "网织红细胞升高"}, "A"),
        q("下列哪些是高血压的危险因素", {"A": "高盐饮食", "B": "肥胖", "C": "长期饮酒", "D": "规律运动"}, "ABC", "多项选择题"),
        q("急性阑尾炎最典型的体征是", {"A": "腹部包块", "B": "肠鸣音亢进", "C": "右下腹固定压痛", "D": "移动性浊音"}, "C"),
    ]
    write_json(HERE / "FreedomIntelligence/CMB/CMB-Exam/CMB-val/CMB-val-merge.json", rows)


def cmexam():
    # fzkuji/CMExam: train.json / valid.json / test.json; Options a list of {key, value}
    def q(question, options, answer):
        return {"Question": question, "Options": [{"key": k, "value": v} for k, v in options.items()],
                "Answer": answer, "Explanation": "", "Medical Discipline": "临床医学",
                "Clinical Department": "内科", "Medical Subject": "内科学", "Competency": "医学知识", "Difficulty": 0.5}
    test = [
        q("洋地黄中毒最常见的心律失常是", {"A": "室性期前收缩", "B": "房颤", "C": "窦性心动过速", "D": "房扑", "E": "室颤"}, "A"),
        q("诊断糖尿病的口服葡萄糖耐量试验2小时血糖标准是", {"A": "≥7.0", "B": "≥11.1", "C": "≥6.1", "D": "≥7.8", "E": "≥10.0"}, "B"),
        q("肺结核最主要的传播途径是", {"A": "飞沫", "B": "消化道", "C": "接触", "D": "血液", "E": "虫媒"}, "A"),
        q("原发性肝癌最常见的首发症状是", {"A": "黄疸", "B": "腹水", "C": "肝区疼痛", "D": "发热", "E": "消瘦"}, "C"),
    ]
    valid = [q("缺铁性贫血首选的治疗是", {"A": "口服铁剂", "B": "输血", "C": "维生素B12", "D": "叶酸", "E": "脾切除"}, "A")]
    write_json(HERE / "fzkuji/CMExam/test.json", test)
    write_json(HERE / "fzkuji/CMExam/valid.json", valid)


def medqa():
    # fzkuji/MedQA: configs med_qa_{zh,en}_4options_source (parquet on the hub); options a list of {key, value}
    def q(question, options, idx, meta):
        return {"meta_info": meta, "question": question, "answer_idx": idx, "answer": options[idx],
                "options": [{"key": k, "value": v} for k, v in options.items()]}
    zh_test = [
        q("男，45岁。突发胸骨后压榨性疼痛2小时，最有价值的检查是", {"A": "心电图", "B": "胸片", "C": "腹部B超", "D": "血常规"}, "A", "第一部分"),
        q("小儿营养性维生素D缺乏性佝偻病初期的主要表现是", {"A": "方颅", "B": "神经兴奋性增高", "C": "鸡胸", "D": "O形腿"}, "B", "第二部分"),
        q("甲状腺功能亢进症最常见的病因是", {"A": "Graves病", "B": "甲状腺腺瘤", "C": "亚急性甲状腺炎", "D": "碘缺乏"}, "A", "第一部分"),
        q("急性心肌梗死最早升高的心肌标志物是", {"A": "肌钙蛋白I", "B": "乳酸脱氢酶", "C": "肌红蛋白", "D": "AST"}, "C", "第三部分"),
    ]
    zh_train = [q("消化性溃疡最常见的并发症是", {"A": "出血", "B": "穿孔", "C": "幽门梗阻", "D": "癌变"}, "A", "第一部分")]
    en_test = [
        q("A 24-year-old presents with polyuria and polydipsia. Which test confirms diabetes mellitus?",
          {"A": "Fasting plasma glucose", "B": "Serum sodium", "C": "Chest X-ray", "D": "Urine culture"}, "A", "step1"),
        q("Which drug reverses heparin anticoagulation?",
          {"A": "Vitamin K", "B": "Protamine sulfate", "C": "Idarucizumab", "D": "Andexanet"}, "B", "step1"),
        q("First-line treatment of anaphylaxis is intramuscular:",
          {"A": "Epinephrine", "B": "Diphenhydramine", "C": "Methylprednisolone", "D": "Albuterol"}, "A", "step2&3"),
        q("The most common cause of community-acquired pneumonia in adults is:",
          {"A": "Klebsiella", "B": "Legionella", "C": "Streptococcus pneumoniae", "D": "Mycoplasma"}, "C", "step1"),
    ]
    en_train = [q("Which vitamin deficiency causes scurvy?", {"A": "Vitamin C", "B": "Vitamin D", "C": "Vitamin A",
                                                                "D": "Vitamin K"}, "A", "step1")]
    root = HERE / "fzkuji/MedQA"
    for lang, test, train in (("zh", zh_test, zh_train), ("en", en_test, en_train)):
        write_jsonl(root / f"med_qa_{lang}_4options_source/test.jsonl", test)
        write_jsonl(root / f"med_qa_{lang}_4options_source/train.jsonl", train)
    readme(root / "README.md", {f"med_qa_{lang}_4options_source": {
        "test": f"med_qa_{lang}_4options_source/test.jsonl", "train": f"med_qa_{lang}_4options_source/train.jsonl"}
        for lang in ("zh", "en")})


def ceval():
    # ceval/ceval-exam: one config per subject; splits dev (5, with explanation), val, test (answers empty)
    subjects = {
        "clinical_medicine": [("肝硬化最常见的并发症是", ("上消化道出血", "肝肾综合征", "原发性肝癌", "肝性脑病"), "A"),
                              ("急性肾小球肾炎最常见的前驱感染是", ("皮肤感染", "链球菌感染", "病毒感染", "真菌感染"), "B")],
        "basic_medicine": [("人体最大的淋巴器官是", ("脾", "胸腺", "扁桃体", "淋巴结"), "A"),
                           ("维持血浆胶体渗透压的主要蛋白是", ("球蛋白", "纤维蛋白原", "白蛋白", "血红蛋白"), "C")],
        "physician": [("心肺复苏时胸外按压的频率是每分钟", ("100至120次", "60至80次", "140至160次", "40至60次"), "A"),
                      ("青霉素过敏性休克属于哪型超敏反应", ("II型", "I型", "III型", "IV型"), "B")],
    }
    configs = {}
    for subject, questions in subjects.items():
        val = [{"id": i, "question": q, "A": o[0], "B": o[1], "C": o[2], "D": o[3], "answer": a, "explanation": ""}
               for i, (q, o, a) in enumerate(questions)]
        dev = [{"id": 0, "question": f"{subject}示例题：正常成人红细胞寿命约为", "A": "120天", "B": "30天", "C": "7天",
                "D": "365天", "answer": "A", "explanation": "红细胞平均寿命约120天。"}]
        write_jsonl(HERE / f"ceval/ceval-exam/{subject}/val.jsonl", val)
        write_jsonl(HERE / f"ceval/ceval-exam/{subject}/dev.jsonl", dev)
        configs[subject] = {"val": f"{subject}/val.jsonl", "dev": f"{subject}/dev.jsonl"}
    readme(HERE / "ceval/ceval-exam/README.md", configs)


def cmmlu():
    # haonan-li/cmmlu (parquet export): one config per subject, splits dev and test; columns Question, A-D, Answer
    subjects = ["anatomy", "clinical_knowledge", "college_medicine", "genetics", "nutrition", "professional_medicine",
                "traditional_chinese_medicine", "virology"]
    configs = {}
    for n, subject in enumerate(subjects):
        test = [{"Question": f"{subject}第一题：人体内含量最多的无机盐是", "A": "钙", "B": "钠", "C": "钾", "D": "铁",
                 "Answer": "A"},
                {"Question": f"{subject}第二题：胰岛素由哪种细胞分泌", "A": "α细胞", "B": "β细胞", "C": "δ细胞",
                 "D": "PP细胞", "Answer": "B" if n % 2 else "A"}]
        dev = [{"Question": f"{subject}示例：人体最大的器官是", "A": "皮肤", "B": "肝", "C": "肺", "D": "脑", "Answer": "A"}]
        write_jsonl(HERE / f"haonan-li/cmmlu/{subject}/test.jsonl", test)
        write_jsonl(HERE / f"haonan-li/cmmlu/{subject}/dev.jsonl", dev)
        configs[subject] = {"test": f"{subject}/test.jsonl", "dev": f"{subject}/dev.jsonl"}
    readme(HERE / "haonan-li/cmmlu/README.md", configs)


def medmcqa():
    # openlifescienceai/medmcqa: splits train / validation / test; opa-opd; cop the correct option's index 0-3
    def q(i, question, options, cop, subject):
        return {"id": f"standin-{i}", "question": question, "opa": options[0], "opb": options[1], "opc": options[2],
                "opd": options[3], "cop": cop, "choice_type": "single", "exp": None, "subject_name": subject,
                "topic_name": None}
    validation = [
        q(1, "Which nerve supplies the diaphragm?", ("Phrenic", "Vagus", "Intercostal", "Accessory"), 0, "Anatomy"),
        q(2, "Drug of choice for absence seizures:", ("Phenytoin", "Ethosuximide", "Carbamazepine", "Phenobarbital"), 1,
          "Pharmacology"),
        q(3, "Koplik spots are seen in:", ("Measles", "Mumps", "Rubella", "Chickenpox"), 0, "Pediatrics"),
        q(4, "Normal intraocular pressure (mm Hg) is about:", ("30-40", "40-50", "10-21", "0-5"), 2, "Ophthalmology"),
        q(5, "Most common site of carcinoid tumour:", ("Appendix", "Stomach", "Colon", "Ileum"), 3, "Surgery"),
    ]
    train = [q(0, "Vitamin deficient in pellagra:", ("Niacin", "Thiamine", "Riboflavin", "Biotin"), 0, "Biochemistry")]
    root = HERE / "openlifescienceai/medmcqa"
    write_jsonl(root / "data/validation.jsonl", validation)
    write_jsonl(root / "data/train.jsonl", train)
    readme(root / "README.md", {"default": {"validation": "data/validation.jsonl", "train": "data/train.jsonl"}})


def pubmedqa():
    # qiaojin/PubMedQA: config pqa_labeled, split train (1,000 rows); context a struct of lists
    def q(pubid, question, contexts, decision):
        return {"pubid": pubid, "question": question,
                "context": {"contexts": contexts, "labels": ["BACKGROUND", "RESULTS"][:len(contexts)],
                            "meshes": ["Humans"], "reasoning_required_pred": ["yes"], "reasoning_free_pred": ["yes"]},
                "long_answer": "Written for the tests.", "final_decision": decision}
    rows = [
        q(1001, "Does daily walking lower resting blood pressure?", ["Adults walked 30 minutes daily.",
                                                                     "Systolic pressure fell by 5 mm Hg."], "yes"),
        q(1002, "Does hair colour predict appendicitis?", ["Hair colour was recorded in 200 patients.",
                                                           "No association was found."], "no"),
        q(1003, "Is a short sleep linked with weight gain in teenagers?", ["Sleep was self-reported.",
                                                                           "Results were mixed."], "maybe"),
        q(1004, "Do statins reduce LDL cholesterol?", ["Patients took statins for 12 weeks.",
                                                       "LDL fell by 40 percent."], "yes"),
    ]
    root = HERE / "qiaojin/PubMedQA"
    write_jsonl(root / "pqa_labeled/train.jsonl", rows)
    readme(root / "README.md", {"pqa_labeled": {"train": "pqa_labeled/train.jsonl"}})


def mmlu():
    # cais/mmlu: one config per subject, splits test / validation / dev; choices a list of 4, answer an index
    subjects = ["anatomy", "clinical_knowledge", "college_biology", "college_medicine", "medical_genetics",
                "professional_medicine"]
    configs = {}
    for n, subject in enumerate(subjects):
        test = [{"question": f"({subject}) Which organ produces bile?", "subject": subject,
                 "choices": ["Liver", "Pancreas", "Spleen", "Kidney"], "answer": 0},
                {"question": f"({subject}) Which cell carries oxygen?", "subject": subject,
                 "choices": ["Platelet", "Red blood cell", "Neutrophil", "Lymphocyte"], "answer": 1}]
        dev = [{"question": f"({subject}) Which vessel leaves the left ventricle?", "subject": subject,
                "choices": ["Aorta", "Vena cava", "Pulmonary vein", "Portal vein"], "answer": 0}]
        write_jsonl(HERE / f"cais/mmlu/{subject}/test.jsonl", test)
        write_jsonl(HERE / f"cais/mmlu/{subject}/dev.jsonl", dev)
        configs[subject] = {"test": f"{subject}/test.jsonl", "dev": f"{subject}/dev.jsonl"}
    readme(HERE / "cais/mmlu/README.md", configs)


if __name__ == "__main__":
    for make in (cmb, cmexam, medqa, ceval, cmmlu, medmcqa, pubmedqa, mmlu):
        make()
