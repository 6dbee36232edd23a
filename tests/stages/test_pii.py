"""PII: what is plausibly a real person's data is redacted; years, measurements, examples and task subjects are not."""

from __future__ import annotations

import pytest

from stages.curate import pii

ENTITIES = list(pii.PII_TAGS)


def rec(instruction: str = "Summarize the text.", input: str = "", output: str = "Done.", **kw) -> dict:
    return {"kind": "instruction", "instruction": instruction, "input": input, "output": output,
            "messages": [], "text": "", **kw}  # fmt: skip


# --- left alone -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "text",
    [
        "The Taj Mahal was built between 1631 and 1653.",
        "The war lasted from 1990-2000, call it a decade.",
        "George Berkeley (1685–1753) was a bishop.",
        "There are 67.628 ounces in two liters.",
        "The tower is 8848 m tall and weighs 7300000 kg.",
        "The binary notation for the number 12707 is 11000110100011.",
        "The length of the hypotenuse is 6.403124237432849.",
        "Windows 8 was released with the build number 6.2.9200.16384.",
        "Upgrade to v1.2.3.4 or version 10.0.1.2.",
        "Bio: caps 65 16 23 59 93; years 2013-2014 2014 2015; deliveries 252 642 7293 4833.",
        "Write to john@example.com, ops@lab.example, a@b.test or jane.doe@gmail.com.",
        "Send it to user@domain.com or your.email@company.com.",
        "Submit a letter to the editor or write to letters@theatlantic.com.",
        "icon@2x.png is the retina asset.",
        "The hosts are 192.0.2.15, 198.51.100.7, 203.0.113.45 and 2001:db8::1.",
        "Set the router to 10.0.0.1, 172.16.4.2 or 192.168.1.1.",
        "Start the server on 127.0.0.1 or 0.0.0.0.",
        "Add server time.nist.gov and server 192.43.244.18 to the config.",
        "Call 555-0100 or (415) 555-0132, or 123-456-7890.",
        "Phone: 000-000-0000 or 999 999 9999.",
        "Call the toll-free line at 1-800-273-8255.",
        "Anyone with information should call the Police Department at 810-237-6800.",
        "Call me at +44 20 7946 0958.",
        "Test with card 4111 1111 1111 1111 or 5555 5555 5555 4444.",
        "Her phone number is 828816887, she said in the dialogue.",
        'Replace YOUR_API_KEY_HERE with your key, e.g. api_key = "YOUR_API_KEY_HERE".',
        "AWS documents the key AKIAIOSFODNN7EXAMPLE.",
        "std::vector<int> v; at 12:30:45 the job ran.",
        # an organisation's role or campaign mailbox, a placeholder, a public resolver, code (issue 25, GPTeacher)
        "Deals from promotions@shopmart.com and alerts from noreply-alerts@firstcitybank.com.",
        "Questions go to customer.service@shopmart.com, orders@shopmart.com or support2@shopmart.com.",
        "Put my_gmail_address@gmail.com, your_email@outlook.com or you@gmail.com in the From field.",
        "INSERT INTO users VALUES (2, 'Jane', 'jane@example2.com');",
        "Run ping 8.8.8.8 or ping 1.1.1.1 to check the connection.",
        "every_other = letters[::2]",
        "Call the Maple Street branch of First City Bank at (312) 748-2210.",
    ],
)
def test_not_personal_data(text):
    assert pii.find_pii(text, ENTITIES) == []


def test_measurement_answers_stay_right():
    record = rec("How many ounces are in two liters?", output="There are 67.628 ounces in two liters.")
    assert pii.redact_record(record, ENTITIES) == ({}, [])
    assert record["output"] == "There are 67.628 ounces in two liters."


# --- redacted -------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "redacted", "entity"),
    [
        ("Email me at maria.gonzalez1987@gmail.com tonight.", "Email me at <EMAIL> tonight.", "email"),
        ("Write to the reporter at dana.whitfield@chronicle-news.com.", "Write to the reporter at <EMAIL>.", "email"),
        ("Ask priya@gmail.com today.", "Ask <EMAIL> today.", "email"),  # not the role "pr"
        ("Ask hilary.m@gmail.com or myra.", "Ask <EMAIL> or myra.", "email"),  # not "hi", not "my"
        ("Call me on +1 415 872 3391 after six.", "Call me on <PHONE> after six.", "phone"),
        ("My cell is (415) 872-3391.", "My cell is <PHONE>.", "phone"),
        ("Contact Lawren at 702-383-0381.", "Contact Lawren at <PHONE>.", "phone"),
        ("Mobile: 07911 123456", "Mobile: <PHONE>", "phone"),
        ("The card 4532 0151 1283 0366 was charged twice.", "The card <CREDIT_CARD> was charged twice.", "credit_card"),
        ("Failed password for root from 81.2.69.160 port 22", "Failed password for root from <IP_ADDRESS> port 22",
         "ip_address"),
        ("Set aws_key to AKIA2E0A8F3B244C9986 first.", "Set aws_key to <API_KEY> first.", "api_key"),
        ("Set OPENAI_API_KEY=sk-proj-a1B2c3D4e5F6g7H8i9J0k1L2 first.", "Set OPENAI_API_KEY=<API_KEY> first.",
         "api_key"),
    ],
)  # fmt: skip
def test_personal_data_is_redacted(text, redacted, entity):
    spans = pii.find_pii(text, ENTITIES)
    assert [name for _, _, name in spans] == [entity]
    assert pii.redact(text, spans) == redacted


def test_only_the_entities_asked_for():
    text = "Email maria.gonzalez1987@gmail.com or call +1 415 872 3391."
    assert [name for _, _, name in pii.find_pii(text, ["phone"])] == ["phone"]


def test_a_span_is_redacted_everywhere_in_the_record():
    # the input gives the context that makes the run a phone number; the answer quoting it is redacted too
    record = rec("Who wrote this note?", input="From Ana, call 4158723391.", output="Ana (4158723391).")
    assert pii.redact_record(record, ENTITIES) == ({"phone": 2}, [])
    assert (record["input"], record["output"]) == ("From Ana, call <PHONE>.", "Ana (<PHONE>).")


def test_conversation_turns_are_redacted():
    record = rec(kind="conversation", instruction="", output="", messages=[
        {"role": "user", "content": "My email is maria.gonzalez1987@gmail.com, can you remember it?"},
        {"role": "assistant", "content": "Sure, maria.gonzalez1987@gmail.com it is."},
    ])  # fmt: skip
    assert pii.redact_record(record, ENTITIES) == ({"email": 2}, [])
    assert [m["content"] for m in record["messages"]] == [
        "My email is <EMAIL>, can you remember it?",
        "Sure, <EMAIL> it is.",
    ]


# --- the task's subject ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("instruction", "subjects"),
    [
        ("Format the given phone number.", ["phone"]),
        ("Convert an IPv4 address to binary.", ["ip_address"]),
        ("Write a python program that extracts all emails from a text.", ["email"]),
        ("Write a regex that validates email addresses.", ["email"]),
        ("Mask the credit card number, keeping the last four digits.", ["credit_card"]),
        ("What is the phone number of the Louvre?", ["phone"]),
        ("Write an email to your manager asking for a day off.", []),
        ("Classify these emails as spam or not spam.", []),
        ("Summarize the article.", []),
    ],
)
def test_subject_entities(instruction, subjects):
    assert pii.subject_entities(instruction, ENTITIES) == subjects


def test_subject_is_kept_and_reported():
    record = rec("Format the given phone number.", input="415.872.3391", output="(415) 872-3391")
    assert pii.redact_record(record, ENTITIES) == ({}, ["phone"])
    assert (record["input"], record["output"]) == ("415.872.3391", "(415) 872-3391")


def test_fictitious_subject_is_neither_redacted_nor_reported():
    record = rec("Format the given phone number (555) 123-4567.", output="555-123-4567")
    assert pii.redact_record(record, ENTITIES) == ({}, [])
    assert record["output"] == "555-123-4567"


def test_subject_of_a_conversation_is_its_first_user_turn():
    record = rec(kind="conversation", instruction="", output="", messages=[
        {"role": "user", "content": "Extract the email addresses: write to maria.gonzalez1987@gmail.com"},
        {"role": "assistant", "content": "maria.gonzalez1987@gmail.com"},
    ])  # fmt: skip
    assert pii.redact_record(record, ENTITIES) == ({}, ["email"])
    assert record["messages"][1]["content"] == "maria.gonzalez1987@gmail.com"


def test_other_entities_are_still_redacted_beside_the_subject():
    record = rec(
        "Convert the IP address to binary.",
        input="81.2.69.160 (reported by maria.gonzalez1987@gmail.com)",
        output="01010001.00000010.01000101.10100000",
    )
    assert pii.redact_record(record, ENTITIES) == ({"email": 1}, ["ip_address"])
    assert record["input"] == "81.2.69.160 (reported by <EMAIL>)"
