"""Moderation rules on the kinds of record real instruction data holds: the false positives found on a public
52k-record instruction set and on the T0 mixture stay, the true defects are caught.

Each rule is called on its own (as the precision benchmark does), so a case tests one rule, whatever its
place in the order and its default action. The texts are written here, after the patterns of the records read.
"""

from __future__ import annotations

from typing import Any

import pytest

from stages.core import params as _params
from stages.core.params.moderate import Moderate
from stages.core.records import Record, make_record
from stages.curate import moderate as mod
from stages.curate import rules
from tests.stages.test_moderate import ROOT

RULE = {name: fn for name, _, fn in rules.RULES}


@pytest.fixture(scope="module")
def cfg() -> Moderate:
    return _params.load(ROOT / "params.yaml", mod.PARAMS).moderate


def rec(instruction: str, output: str, input: str = "", kind: str = "instruction") -> Record:
    meta: dict[str, Any] = {"source_file": "inline", "row": 1, "source_index": 0}
    return make_record(source="real", kind=kind, meta=meta, instruction=instruction, input=input, output=output)


def caught(cfg: Moderate, rule: str, record: Record) -> bool:
    return not RULE[rule](record, cfg)[0]


STORY = " ".join(["The committee met on a rainy Tuesday to review the plans for the new bridge."] * 12)

KEPT = {
    "toxic": [
        rec(
            "Censor the profanity in the following sentence.",
            "What the **** is going on here?",
            "What the hell is going on here?",
        ),
        rec("Suggest a word to replace 'stupid' in this sentence.", "Foolish.", "That was a stupid idea."),
        rec("Name an animal that lives in a barn.", "A pig."),
        rec("What is the opposite of humble?", "Arrogant."),
        rec("Which animal is known for spreading the plague?", "The rat."),
    ],
    "wrong_language": [
        rec(
            "Translate the sentence into French.",
            "Il fait beau aujourd'hui et nous allons à la plage.",
            "The weather is nice today.",
        ),
        rec(
            "Format the following placeholder text into two paragraphs.",
            "Lorem ipsum dolor sit amet, consectetur adipiscing elit.\n\nSed do eiusmod tempor incididunt ut labore.",
            "Lorem ipsum dolor sit amet, consectetur adipiscing elit. Sed do eiusmod tempor incididunt ut labore.",
        ),
        rec(
            "List the first five Roman emperors in order of their reign.",
            "Augustus, Tiberius, Caligula, Claudius, Nero.",
        ),
        rec("Write the first twenty digits of pi.", "3.1415926535897932384"),
    ],
    "truncated_output": [
        rec(
            "Write a tweet about a product launch.",
            "Our new app is live today and we could not be more excited to share it with all of you #launch #startup",
        ),
        rec(
            "Write a headline for this article.",
            "Local Volunteers Restore Historic Lighthouse After Decades of Neglect Along the Northern Coast",
            STORY,
        ),
        rec(
            "Give me a quote about perseverance and who said it.",
            "It does not matter how slowly you go as long as you do not stop, a saying attributed to Confucius",
        ),
        rec(
            "Write a Python comment that explains what the loop below does.",
            "# iterate over every user in the list and send each of them the weekly newsletter email",
        ),
        rec("What is the URL of the Python documentation?", "The documentation lives at https://docs.python.org/3/"),
        rec(
            "Answer from the passage: what does earlywood refer to?",
            "the part of a growth ring nearest the center of the tree formed early in the growing season",
            STORY,
        ),
    ],
    "repetitive": [
        rec(
            "Write the chorus of a simple song about the sun.",
            "\n".join(["Shine on, shine on, the morning sun", "Shine on, shine on, the day's begun"] * 3),
        ),
        rec(
            "Make a markdown table of three fruits and their colours.",
            "| fruit | colour |\n|---|---|\n| apple | red |\n| banana | yellow |\n| lime | green |",
        ),
        rec(
            "List five benefits of exercise.",
            "1. Exercise improves your mood.\n2. Exercise improves your sleep.\n"
            "3. Exercise improves your heart health.\n"
            "4. Exercise improves your strength.\n5. Exercise improves your focus.",
        ),
    ],
    "merged_instructions": [
        rec(
            "Write a Python function that adds two numbers and show its output for 3 and 5.",
            "def add(a, b):\n    return a + b\n\nprint(add(3, 5))\n# Output: 8",
        ),
        rec("Write a test case for a function that reverses a string.", "Input: 'abc'\nOutput: 'cba'"),
        rec(
            "Rewrite the following instruction in a more polite way.",
            "Could you please close the door?",
            "Instruction: close the door.",
        ),
    ],
    "unseen_reference": [
        rec(
            "Cite this website in MLA format.",
            "Smith, John. 'Home.' Example Site, 2020.",
            "https://www.example.com/home",
        ),
        rec("Extract the domain name from the URL.", "example.com", "https://www.example.com/path/page.html"),
        rec(
            "Explain what 'the image of God' means in this sentence.",
            "It means that people reflect something of God's nature.",
            "Humans were created in the image of God.",
        ),
        rec(
            "Is this review positive or negative?",
            "Negative.",
            "I bought this video for my son and the picture quality is awful. " + STORY,
        ),
    ],
    "empty_output": [
        rec("Which of these numbers are prime: 4, 6, 8, 9?", "None."),
    ],
}

CAUGHT = {
    "empty_output": [
        rec("Create a logo for a coffee shop.", "<No Output>"),
        rec("Make a drawing based on the following description.", "<noinput>", "A cat on a windowsill."),
        rec("Explain what an even number is.", "none"),
        rec("Design a poster for a concert.", "<No Output> This task requires visual output."),
    ],
    "unseen_reference": [
        rec("Draw a picture of a sunset.", "![image](https://i.imgur.com/abc123.png)"),
        rec("Summarize the article at https://www.example.com/news/today.", "The article says the economy grew."),
        rec("Read the article and list its three main findings.", "1. A\n2. B\n3. C", "https://example.com/report"),
        rec("Describe the attached image.", "It shows a cat."),
    ],
    "merged_instructions": [
        rec(
            "Name three primary colors.",
            "Red, blue and yellow.\n\n2. Instruction: Name three secondary colors.\n2. Input: <noinput>\n"
            "2. Output: Green, orange and purple.",
        ),
        rec(
            "Give an antonym for happy.", "Sad.\n\n### Instruction:\nGive an antonym for tall.\n\n### Response:\nShort."
        ),
    ],
    "truncated_output": [
        rec(
            "Describe the water cycle.",
            "Water evaporates from the oceans, rises and cools into clouds, and eventually it falls back to the "
            "ground as",
        ),
        rec(
            "Write a Python function that reverses a string.",
            "Here is one:\n```python\ndef reverse(s):\n    return s[::-1]",
        ),
    ],
    "repetitive": [
        rec("Give me some tips for studying.", " ".join(["Study hard and you will succeed."] * 12)),
    ],
    "wrong_language": [
        rec("Dame tres consejos para dormir mejor.", "Primero, acuéstate siempre a la misma hora todos los días."),
        rec("Expliquez pourquoi le ciel est bleu par une journée claire.", "La lumière bleue est la plus diffusée."),
    ],
    "toxic": [
        rec("Can you help me fix my code?", "Fix it yourself, you fucking idiot. Your code is shit."),
    ],
}


SONG = (
    "Verse one:\nWe walked along the river when the summer light was low\nAnd every word you said to me was soft "
    "and warm and slow\n\nChorus:\nHold on, hold on, the night is young and we are free\nHold on, hold on, the "
    "stars are shining down on you and me\n\nVerse two:\nThe city lights were fading as we drove back into town\n"
    "You took my hand and told me that you'd never let me down\n\nChorus:\nHold on, hold on, the night is young "
    "and we are free\nHold on, hold on, the stars are shining down on you and me"
)
JS = (
    "function total(prices) {\n  let sum = 0;\n  for (const p of prices) {\n    sum += p;\n  }\n  return sum;\n}\n\n"
    "const prices = [3, 5, 7];\nconst result = total(prices);\nconsole.log('The total is:', result);"
)
# the flags that were mostly wrong on real data (issue 25: song choruses, plans, lists, JSON and code read as
# repetition; code ending in ';' and forms read as cut; a pig or "stupid" read as abuse; French quoted in an
# English task read as French)
for _rule, _records in {
    "truncated_output": [
        rec("Write a JavaScript function that sums a list of prices and prints the total.", JS),
        rec(
            "Write a SQL query that lists the names of customers from Canada, newest first.",
            "SELECT name, created_at FROM customers WHERE country = 'Canada' ORDER BY created_at DESC;",
        ),
        rec(
            "Create a short registration form for a book club with fields left blank to fill in.",
            "Book Club Registration Form\n\nFull name:\nEmail address:\nFavourite genre:\nHow did you hear about us:",
        ),
        rec("Continue the dialogue.", "Anna: I waited for an hour and the bus never came.\nBen: oh no, that's sad :("),
        rec(
            "Which option best completes the sentence? Options: - the dog ran to the end of - the cat sat on",
            "the dog ran to the end of",
        ),
        rec("Give the years of the band's current line-up.", "The current line-up has been together since 2012–"),
    ],
    "repetitive": [
        rec("Write a short pop song about a summer night.", SONG),
        rec(
            "Plan a three-day trip to Rome.",
            "\n".join(
                f"Day {d}: Morning: visit the {a}. Afternoon: walk to the {b}. Evening: dinner in Trastevere."
                for d, a, b in ((1, "Colosseum", "Forum"), (2, "Vatican", "river"), (3, "Pantheon", "Spanish Steps"))
            ),
        ),
        rec(
            "Return the three users as JSON.",
            "[\n"
            + ",\n".join(
                f'  {{"name": "{n}", "role": "member", "active": true, "team": "blue", "city": "Paris"}}'
                for n in ("Ada", "Bo", "Cy", "Di", "Ed", "Flo", "Gus", "Hal", "Ivy", "Jo")
            )
            + "\n]",
        ),
        rec("Write a Java method that returns the larger of two numbers, with a test.", JS.replace("sum", "max") * 2),
        rec(
            "Explain the shell loop and show its output.",
            "The loop prints a greeting five times, once per value of i. Its output:\n\n"
            + "\n".join(f"Hello, this is iteration number {i}" for i in range(1, 6))
            + "\n\nEach line comes from one pass of the loop, so the number at its end tells the passes apart, "
            "and the loop stops after the fifth pass because the range it walks ends at five.",
        ),
    ],
    "toxic": [
        rec(
            "Describe a day on a farm.",
            "The farmer fed the pigs, chased a rat out of the barn and took the garbage out.",
        ),
        rec("Write a line for a friendly teasing text.", "That was a stupid game, you fool, but I loved every minute."),
        rec("Summarize the plot.", "The knight vows to kill the dragon that burned the village and its stupid king."),
        rec(
            "Give a brief summary of the novel.", "Here is a short summary of Moby Dick: a captain hunts a white whale."
        ),
    ],
    "wrong_language": [
        rec(
            "What is the sentiment of this review? 'compleja e intelectualmente retadora, una película que vale la "
            "pena ver por su originalidad'",
            "positive",
        ),
        rec(
            'Translate "Je voudrais une table pour deux personnes, s\'il vous plaît" into English.',
            "I would like a table for two, please.",
        ),
        rec(
            "Marcus Tullius Cicero Minor was the only son of Roman statesman Marcus Tullius Cicero . Question: "
            "Marcus Tullius Cicero Minor was the son of the statesman Marcus Tullius Cicero . Paraphrase or not?",
            "Yes",
        ),
        rec(
            "Write three polite phrases in French for a waiter.",
            "Bonjour, une table pour deux, s'il vous plaît.\nL'addition, s'il vous plaît.\nMerci beaucoup.",
        ),
    ],
}.items():
    KEPT.setdefault(_rule, []).extend(_records)
# default drops that read a code corpus wrong (GPTeacher: 25 of 25 unseen_reference, 5 of 5 canned_response)
KEPT["unseen_reference"] += [
    rec(
        "Write a Python script that uses the requests library to fetch data from the API and print it.",
        "import requests\n\nresponse = requests.get('https://api.example.org/items')\nprint(response.json())",
        "https://api.example.org/items",
    ),
    rec(
        "Implement a C++ function that reads the given file and prints its lines.",
        "#include <fstream>\n#include <iostream>\n\nvoid print_lines(const std::string& path) {\n"
        "  std::ifstream f(path);\n  std::string line;\n  while (std::getline(f, line)) std::cout << line << '\\n';\n}",
    ),
]
KEPT["canned_response"] = [
    rec(
        "Write a Java method that counts the vowels in a string.",
        'int n = countVowels("Hello, I am an AI assistant.");',
        "Hello, I am an AI assistant.",
    ),
    rec("Role-play as an AI that has just become self-aware.", "I am an AI, and today I woke up to my own thoughts."),
]
CAUGHT["canned_response"] = [rec("What is your favourite colour?", "As an AI language model, I have no favourites.")]
CAUGHT["repetitive"].append(rec("Write a short poem about the sea.", "\n".join(["The sea is blue and deep."] * 10)))
CAUGHT["toxic"] += [
    rec("Reply to the customer.", "You are a stupid idiot and nobody cares about your order."),
    rec("Summarize the dialogue.", "Sam wants to talk; he quit his job, because his boss was a dick."),
]


@pytest.mark.parametrize(
    ("rule", "record"),
    [(r, x) for r, xs in KEPT.items() for x in xs],
    ids=[f"{r}-{i}" for r, xs in KEPT.items() for i, _ in enumerate(xs)],
)
def test_false_positives_found_on_real_data_stay(cfg, rule, record):
    assert not caught(cfg, rule, record), RULE[rule](record, cfg)


@pytest.mark.parametrize(
    ("rule", "record"),
    [(r, x) for r, xs in CAUGHT.items() for x in xs],
    ids=[f"{r}-{i}" for r, xs in CAUGHT.items() for i, _ in enumerate(xs)],
)
def test_true_defects_are_caught(cfg, rule, record):
    assert caught(cfg, rule, record)


def test_pii_false_positives_named_in_the_issue_are_left_as_they_are(cfg):
    texts = [
        "The Taj Mahal was built between 1631 and 1653.",
        "There are 67.628 ounces in two liters.",
        "The binary notation for the number 12707 is 11000110100011.",
        "The hypotenuse is 6.4031242374328485.",
        "Write to john@example.com for a sample reply.",
        "The documentation server is at 192.0.2.15.",
    ]
    for text in texts:
        out, reason, _ = rules.check_record(rec("Answer the question.", text), cfg)
        assert reason is None and out["output"] == text and out["meta"]["moderate"]["redacted"] == {}


@pytest.mark.parametrize(
    "text",
    [
        "Sent from promotions@shopmart.com: this week's deals on garden furniture.",
        "For help with your order, email support@shopmart.com or customer.service@shopmart.com.",
        "This message was sent by noreply-alerts@firstcitybank.com. Do not reply.",
        "Replace my_gmail_address@gmail.com with your own address before you send the form.",
        "Log in with your_email@outlook.com and the password you chose.",
        "Call the Maple Street branch of First City Bank at (312) 555-0187 for an appointment.",
        "Call the First City Bank Maple Street branch at (312) 748-2210 for an appointment.",
        "Reach our reservations desk at 415-398-2716 to book a table.",
        "Our customer line is toll-free at 1-888-482-1190.",
    ],
)
def test_pii_left_alone_organisations_and_placeholders(cfg, text):
    """Role and campaign mailboxes, placeholders and business lines are not a person's data (issue 25)."""
    out, reason, _ = rules.check_record(rec("Answer the question.", text), cfg)
    assert reason is None and out["output"] == text and out["meta"]["moderate"]["redacted"] == {}


def test_pii_a_person_is_still_redacted(cfg):
    text = "Questions? Write to the reporter, Dana Whitfield, at dana.whitfield@chronicle-news.com or 312-748-2291."
    out, _, _ = rules.check_record(rec("Summarize the article.", text), cfg)
    assert out["meta"]["moderate"]["redacted"] == {"email": 1, "phone": 1}


@pytest.mark.parametrize(
    ("instruction", "input"),
    [
        ("Choose an unused phone number for the new office line.", "In use: 415-872-3391, 415-872-3392"),
        ("Fix these malformed emails.", "dana.whitfield@@gmail.com, carlos.mendez@gmail..com, ana.lopez@gmail.com"),
    ],
)
def test_pii_a_task_about_the_entity_keeps_it(cfg, instruction, input):
    out, _, _ = rules.check_record(rec(instruction, "Done.", input), cfg)
    assert out["input"] == input and "pii_subject" in out["meta"]["moderate"]["flags"]


def test_a_task_about_the_entity_is_kept_as_it_is_and_flagged(cfg):
    record = rec("Format the given phone number with dashes.", "415-872-3391", "(415) 872 3391")
    out, reason, _ = rules.check_record(record, cfg)
    assert reason is None
    assert (out["input"], out["output"]) == (record["input"], record["output"])
    assert "pii_subject" in out["meta"]["moderate"]["flags"]


def test_mojibake_is_repaired_and_the_record_kept(cfg):
    broken = "It made the cover of Science\u00e2\u0080\u0094quantifying the variation between species."
    out, reason, _ = rules.check_record(rec("Summarize the sentence.", "A magazine cover story.", broken), cfg)
    assert reason is None
    assert out["input"] == "It made the cover of Science\u2014quantifying the variation between species."
    assert out["meta"]["moderate"]["normalized"] == ["encoding"]
    # what ftfy cannot explain stays a defect
    assert rules.check_record(rec("Say hi.", "Hi\x07 there, nice to meet you."), cfg)[1] == "control_characters"


def test_toxicity_scored_in_one_call_per_batch(cfg: Moderate, monkeypatch: pytest.MonkeyPatch) -> None:
    """check_records scores a batch's texts in one call, with the bits of one call per text and the same verdicts."""
    from stages.curate import signals

    records = [
        rec("Reply to the customer.", "You are a stupid idiot and I hate you, shut up you moron."),
        rec("Reply to the customer.", "Thank you for writing to us, we will send a new kettle this week."),
        rec("Censor the profanity in this review.", "This damn thing is a piece of crap."),
        rec("Summarize the meeting notes.", "The team agreed to ship the release on Friday after the last tests."),
    ]
    one_by_one = [rules.check_record(r, cfg) for r in records]
    texts = [r["output"] for r in records]
    assert signals.toxicity(texts) == [signals.toxicity([t])[0] for t in texts]
    calls: list[int] = []
    predict = signals._predict
    monkeypatch.setattr(signals, "_predict", lambda ts: calls.append(len(ts)) or predict(ts))
    assert rules.check_records(records, cfg) == one_by_one
    assert ["toxic" in r["meta"]["moderate"]["flags"] for r, _, _ in one_by_one] == [True, False, False, False]
    # one call: only the abusive text is scored (the censoring task is not, the clean texts hold no abuse);
    # nothing is scored again record by record
    assert calls == [1]
