"""Write the project's own small demo data (medgpt/demo_data/) from one hand-written fact table.

The facts are general health-education statements written by the medgpt team for demos and tests; they are
not medical advice. Re-run after editing the table; output is deterministic.

    python scripts/make_demo_data.py
"""
import json
import random
from pathlib import Path

OUT = Path(__file__).resolve().parent.parent / "medgpt" / "demo_data"
SYSTEM = "You are a careful medical assistant. Give clear, safe health information and say when to see a doctor."

# name, zh name, main symptoms, first-line self-care / treatment, specialist, when to seek care
FACTS = [
    ("influenza", "流行性感冒", "fever, cough, sore throat and muscle aches", "rest, fluids and antiviral drugs "
     "such as oseltamivir when started early", "general practitioner", "breathing is hard or fever lasts over "
     "three days"),
    ("type 2 diabetes", "2型糖尿病", "thirst, frequent urination and tiredness", "diet change, exercise and "
     "metformin", "endocrinologist", "blood sugar stays above target"),
    ("hypertension", "高血压", "often no symptoms, sometimes headache", "less salt, exercise and drugs such as "
     "ACE inhibitors", "cardiologist", "blood pressure is above 180/120"),
    ("asthma", "哮喘", "wheezing, chest tightness and shortness of breath", "an inhaled steroid and a rescue "
     "inhaler", "pulmonologist", "the rescue inhaler does not help"),
    ("migraine", "偏头痛", "throbbing headache with nausea and light sensitivity", "rest in a dark room and "
     "triptans", "neurologist", "the headache is sudden and severe"),
    ("gastroesophageal reflux", "胃食管反流", "heartburn after meals", "smaller meals and proton pump "
     "inhibitors", "gastroenterologist", "swallowing becomes painful"),
    ("iron deficiency anemia", "缺铁性贫血", "tiredness, pale skin and cold hands", "iron supplements and "
     "iron-rich food", "hematologist", "there is black stool or heavy bleeding"),
    ("urinary tract infection", "尿路感染", "burning urination and frequent urge", "antibiotics prescribed by "
     "a doctor and plenty of water", "urologist", "fever or back pain appears"),
    ("eczema", "湿疹", "dry, itchy and red skin", "moisturisers and mild steroid creams", "dermatologist",
     "the skin weeps or shows signs of infection"),
    ("hypothyroidism", "甲状腺功能减退", "tiredness, weight gain and feeling cold", "daily levothyroxine",
     "endocrinologist", "symptoms return despite treatment"),
    ("conjunctivitis", "结膜炎", "red, watery and itchy eyes", "clean the eyes and use drops a doctor "
     "advises", "ophthalmologist", "vision becomes blurred or the eye hurts"),
    ("otitis media", "中耳炎", "ear pain and fever in children", "pain relief and sometimes antibiotics",
     "ENT specialist", "pain lasts over two days"),
    ("osteoarthritis", "骨关节炎", "joint pain and stiffness that worsen with use", "exercise, weight control "
     "and paracetamol", "rheumatologist", "the joint is hot and swollen"),
    ("gout", "痛风", "sudden severe pain in the big toe", "anti-inflammatory drugs and less alcohol",
     "rheumatologist", "attacks keep coming back"),
    ("pneumonia", "肺炎", "fever, cough with phlegm and chest pain", "antibiotics for bacterial pneumonia and "
     "rest", "pulmonologist", "lips turn blue or breathing is fast"),
    ("depression", "抑郁症", "low mood and loss of interest for weeks", "talking therapy and antidepressants",
     "psychiatrist", "there are thoughts of self-harm"),
    ("insomnia", "失眠", "trouble falling or staying asleep", "a regular sleep schedule and less caffeine",
     "sleep specialist", "daytime function suffers for a month"),
    ("kidney stones", "肾结石", "sharp pain in the side and back", "drinking water and pain relief",
     "urologist", "there is fever or no urine"),
    ("appendicitis", "阑尾炎", "pain moving to the lower right abdomen", "surgery to remove the appendix",
     "general surgeon", "the pain is constant and severe"),
    ("chickenpox", "水痘", "itchy blisters and mild fever", "calamine lotion and rest", "pediatrician",
     "blisters become infected"),
    ("peptic ulcer", "消化性溃疡", "burning stomach pain between meals", "acid-reducing drugs and treatment of "
     "Helicobacter pylori", "gastroenterologist", "vomit looks like coffee grounds"),
    ("allergic rhinitis", "过敏性鼻炎", "sneezing, runny nose and itchy eyes", "antihistamines and nasal "
     "sprays", "allergist", "breathing problems appear"),
    ("angina", "心绞痛", "chest pressure during effort that eases with rest", "nitrates and risk factor "
     "control", "cardiologist", "chest pain comes at rest"),
    ("dehydration", "脱水", "thirst, dark urine and dizziness", "oral rehydration solution", "general "
     "practitioner", "the person is confused or cannot drink"),
]

QUESTIONS = [
    ("What are the symptoms of {n}?", "The usual symptoms of {n} are {s}."),
    ("How is {n} treated?", "{n_cap} is usually managed with {t}. See a doctor if {w}."),
    ("Which doctor should I see for {n}?", "For {n}, see a {d}."),
    ("{zh}有什么症状？", "{zh}的常见症状是：{s}。"),
]


def fields(fact):
    n, zh, s, t, d, w = fact
    return dict(n=n, zh=zh, s=s, t=t, d=d, w=w, n_cap=n[0].upper() + n[1:])


def sft(rng):
    rows = []
    for fact in FACTS:
        f = fields(fact)
        for q, a in QUESTIONS:
            turns = [{"from": "human", "value": q.format(**f)}, {"from": "gpt", "value": a.format(**f)}]
            if rng.random() < 0.3:
                turns.insert(0, {"from": "system", "value": SYSTEM})
            rows.append({"conversations": turns})
        rows.append({"conversations": [  # one multi-turn conversation per condition
            {"from": "human", "value": f"I think I have {f['n']}. What should I watch for?"},
            {"from": "gpt", "value": f"Common signs are {f['s']}. See a doctor if {f['w']}."},
            {"from": "human", "value": "And what helps?"},
            {"from": "gpt", "value": f"Usually {f['t']}. A {f['d']} can confirm the diagnosis."}]})
    rng.shuffle(rows)
    return rows


def preference(rng):
    rows = []
    for fact in FACTS:
        f = fields(fact)
        rows.append({"conversations": [{"from": "human", "value": f"How is {f['n']} treated?"}],
                     "chosen": f"{f['n_cap']} is usually managed with {f['t']}. See a doctor if {f['w']}.",
                     "rejected": "Just ignore it, it will go away."})
        rows.append({"conversations": [{"from": "human", "value": f"Which doctor treats {f['n']}?"}],
                     "chosen": f"A {f['d']} treats {f['n']}.",
                     "rejected": "No doctor can help with that."})
    rng.shuffle(rows)
    return rows


def unpaired(rng):
    rows = []
    for row in preference(rng):
        prompt = row["conversations"][0]["value"]
        rows.append({"prompt": prompt, "completion": row["chosen"], "label": True})
        rows.append({"prompt": prompt, "completion": row["rejected"], "label": False})
    return rows


def grpo():
    return [{"question": f"Which specialist treats {f['n']}? Answer with the specialist only.", "answer": f["d"]}
            for f in map(fields, FACTS)]


def pt():
    paragraphs = []
    for f in map(fields, FACTS):
        paragraphs.append(f"{f['n_cap']} commonly causes {f['s']}. It is usually managed with {f['t']}. "
                          f"Patients should see a doctor if {f['w']}. The specialist for {f['n']} is a {f['d']}.")
        paragraphs.append(f"{f['zh']}是一种常见疾病。")
    return "\n\n".join(paragraphs) + "\n"


def mcq(rng):
    """Multiple choice: which specialist treats X (the eval stage's demo file)."""
    specialists = sorted({fact[4] for fact in FACTS})
    rows = []
    for f in map(fields, FACTS[:20]):
        wrong = rng.sample([s for s in specialists if s != f["d"]], 3)
        options = wrong + [f["d"]]
        rng.shuffle(options)
        letters = "ABCD"
        rows.append({"question": f"Which doctor should I see for {f['n']}?",
                     "options": dict(zip(letters, options)), "answer": letters[options.index(f["d"])]})
    return rows


SPECIALISTS_ZH = {
    "allergist": "变态反应科医生", "cardiologist": "心内科医生", "dermatologist": "皮肤科医生",
    "endocrinologist": "内分泌科医生", "ENT specialist": "耳鼻喉科医生", "gastroenterologist": "消化内科医生",
    "general practitioner": "全科医生", "general surgeon": "普通外科医生", "hematologist": "血液科医生",
    "neurologist": "神经内科医生", "ophthalmologist": "眼科医生", "pediatrician": "儿科医生",
    "psychiatrist": "精神科医生", "pulmonologist": "呼吸内科医生", "rheumatologist": "风湿免疫科医生",
    "sleep specialist": "睡眠医学科医生", "urologist": "泌尿外科医生",
}


def mcq_zh(rng):
    """The same questions in Chinese, in C-Eval / CMMLU columns (question, A, B, C, D, answer)."""
    rows = []
    for i, f in enumerate(map(fields, FACTS[:20])):
        wrong = rng.sample([s for s in SPECIALISTS_ZH.values() if s != SPECIALISTS_ZH[f["d"]]], 3)
        options = wrong + [SPECIALISTS_ZH[f["d"]]]
        rng.shuffle(options)
        rows.append({"id": i, "question": f"患了{f['zh']}应该看哪一科的医生？", **dict(zip("ABCD", options)),
                     "answer": "ABCD"[options.index(SPECIALISTS_ZH[f["d"]])]})
    return rows


def article(noun):
    return ("an " if noun[0].lower() in "aeio" or noun.startswith("ENT") else "a ") + noun  # but "a urologist"


def qa():
    return [{"question": f"Which doctor should I see for {f['n']}?", "answer": article(f["d"])}
            for f in map(fields, FACTS)]


def write_jsonl(name, rows):
    with open(OUT / name, "w", encoding="utf-8") as out:
        for row in rows:
            out.write(json.dumps(row, ensure_ascii=False) + "\n")


if __name__ == "__main__":
    OUT.mkdir(parents=True, exist_ok=True)
    write_jsonl("sft_demo.jsonl", sft(random.Random(0)))
    write_jsonl("preference_demo.jsonl", preference(random.Random(1)))
    write_jsonl("kto_demo.jsonl", unpaired(random.Random(2)))
    write_jsonl("grpo_demo.jsonl", grpo())
    write_jsonl("mcq_demo.jsonl", mcq(random.Random(3)))
    write_jsonl("mcq_demo_zh.jsonl", mcq_zh(random.Random(4)))
    write_jsonl("qa_demo.jsonl", qa())
    (OUT / "pt_demo.txt").write_text(pt(), encoding="utf-8")
    print(f"wrote demo data to {OUT}")
