"""Tests of stages/curate/pull.py: every format and location kind, provenance, determinism, and every bad input.

Each test works in its own temporary directory (the "project root" the stage reads relative paths from).
Nothing reaches the network: sockets may connect to 127.0.0.1 only (see `no_network`), web pages are served
by a local http.server, and the Hub is reached in offline mode (tests/conftest.py).
"""

from __future__ import annotations

import hashlib
import json
import os
import socket
import subprocess
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import yaml

from stages.core import params as _params
from stages.core.io import StageError
from stages.core.records import read_record_dir, read_records
from stages.curate.pull import PARAMS, run

# --- fixtures and helpers ---------------------------------------------------------


@pytest.fixture(autouse=True)
def no_network(monkeypatch: pytest.MonkeyPatch) -> None:
    """Refuse any socket connection that leaves this machine (trafilatura, datasets, requests alike)."""
    real_connect = socket.socket.connect

    def guarded(self: socket.socket, address: Any) -> Any:
        if self.family in (socket.AF_INET, socket.AF_INET6) and address[0] not in ("127.0.0.1", "::1"):
            raise AssertionError(f"a test tried to reach the network: {address}")
        return real_connect(self, address)

    monkeypatch.setattr(socket.socket, "connect", guarded)
    for var in ("HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "http_proxy", "https_proxy", "all_proxy"):
        monkeypatch.delenv(var, raising=False)


@pytest.fixture
def work(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A scratch project root: the current directory while the test runs."""
    monkeypatch.chdir(tmp_path)
    return tmp_path


def pull(root: Path, sources: list[dict[str, Any]], out: str = "pulled", **overrides: Any) -> dict[str, Any]:
    params = _params.load(root / "params.yaml", PARAMS, overrides={"pull.sources": sources, **overrides})
    return run(params, inputs={}, outputs={"out": Path(out)})


def fails(root: Path, sources: list[dict[str, Any]], match: str, **overrides: Any) -> str:
    """Pull must stop with a StageError matching `match` and leave no output (final or temporary) behind."""
    with pytest.raises(StageError, match=match) as err:
        pull(root, sources, **overrides)
    assert not Path("pulled").exists()
    assert not [p.name for p in Path.cwd().iterdir() if p.name.startswith(".pulled")]
    return str(err.value)


def write_jsonl(path: str, rows: list[Any]) -> str:
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    Path(path).write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


def src(name: str, fmt: str, location: str, **extra: Any) -> dict[str, Any]:
    return {"name": name, "format": fmt, "location": location, **extra}


def by_row(records: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return sorted(records, key=lambda r: (r["meta"]["source_file"], r["meta"]["row"]))


ALPACA = [
    {"instruction": "Name a primary colour.", "input": "", "output": "Red.", "category": "open_qa"},
    {"instruction": "Translate to French.", "input": "Good morning", "output": "Bonjour", "category": "translation"},
    {"instruction": "Say hi.", "output": "Hi!", "category": "chat"},  # no input: read as ""
]


# --- formats and local locations ---------------------------------------------------


def test_alpaca_jsonl_records_and_provenance(root: Path, work: Path) -> None:
    path = write_jsonl("data/a.jsonl", ALPACA[:1])
    with open(path, "a", encoding="utf-8") as f:  # a blank line: skipped, but line numbers still count it
        f.write("\n" + "".join(json.dumps(r) + "\n" for r in ALPACA[1:]))
    metrics = pull(root, [src("a", "alpaca", path, label_field="category")])
    assert metrics == {"total": 3, "kept": 3, "records_a": 3}
    records = by_row(read_records(work / "pulled" / "a.parquet"))
    assert [r["meta"]["row"] for r in records] == [1, 3, 4]  # JSONL line numbers
    sha = hashlib.sha256(Path(path).read_bytes()).hexdigest()
    assert records[1]["meta"] == {
        "source_file": "data/a.jsonl",
        "row": 3,
        "source_index": 0,
        "file_sha256": sha,
        "label": "translation",
    }
    assert {r["kind"] for r in records} == {"instruction"}
    assert [(r["instruction"], r["input"], r["output"]) for r in records] == [
        ("Name a primary colour.", "", "Red."),
        ("Translate to French.", "Good morning", "Bonjour"),
        ("Say hi.", "", "Hi!"),
    ]
    assert all(r["messages"] == [] and r["text"] == "" and r["source"] == "a" for r in records)


def test_json_csv_parquet_and_field_mapping(root: Path, work: Path) -> None:
    Path("a.json").write_text(json.dumps(ALPACA), encoding="utf-8")
    # CSV with other column names, an empty cell (kept as "") and a quoted comma/newline
    Path("b.csv").write_text(
        'prompt,context,response\n"Add 2 and 2.",,4\n"List two fruits, please.","","apple,\nbanana"\n',
        encoding="utf-8",
    )
    pq.write_table(
        pa.Table.from_pylist([{"q": "What is 2+3?", "a": "5"}, {"q": "Capital of Peru?", "a": "Lima"}]), "c.parquet"
    )
    mapping = {"instruction": "prompt", "input": "context", "output": "response"}
    metrics = pull(
        root,
        [
            src("j", "alpaca", "a.json"),
            src("c", "alpaca", "b.csv", fields=mapping),
            src("p", "qa", "c.parquet", fields={"question": "q", "answer": "a"}),
        ],
    )
    assert metrics == {"total": 7, "kept": 7, "records_j": 3, "records_c": 2, "records_p": 2}
    j = by_row(read_records("pulled/j.parquet"))
    assert [r["meta"]["row"] for r in j] == [1, 2, 3]  # array index + 1
    c = by_row(read_records("pulled/c.parquet"))
    assert [(r["instruction"], r["input"], r["output"]) for r in c] == [
        ("Add 2 and 2.", "", "4"),
        ("List two fruits, please.", "", "apple,\nbanana"),
    ]
    assert [r["meta"]["row"] for r in c] == [1, 2]  # data row index + 1
    p = by_row(read_records("pulled/p.parquet"))
    assert [(r["kind"], r["instruction"], r["output"], r["meta"]["source_index"]) for r in p] == [
        ("qa", "What is 2+3?", "5", 2),
        ("qa", "Capital of Peru?", "Lima", 2),
    ]


def test_folder_of_data_files(root: Path, work: Path) -> None:
    write_jsonl("d/2.jsonl", ALPACA[1:])
    Path("d/1.json").write_text(json.dumps(ALPACA[:1]), encoding="utf-8")
    Path("d/README").write_text("not data", encoding="utf-8")  # other files are ignored
    pull(root, [src("d", "alpaca", "d")])
    records = by_row(read_records("pulled/d.parquet"))
    assert [(r["meta"]["source_file"], r["meta"]["row"]) for r in records] == [
        ("d/1.json", 1),
        ("d/2.jsonl", 1),
        ("d/2.jsonl", 2),
    ]


def test_sharegpt_roles_normalized(root: Path, work: Path) -> None:
    Path("s.json").write_text(
        json.dumps(
            [
                {
                    "id": "x1",
                    "conversations": [
                        {"from": "system", "value": "Be brief."},
                        {"from": "human", "value": "Hello?"},
                        {"from": "gpt", "value": " Hi. "},
                    ],
                }
            ]
        ),
        encoding="utf-8",
    )
    pull(root, [src("s", "sharegpt", "s.json")])
    (record,) = read_records("pulled/s.parquet")
    assert record["kind"] == "conversation"
    assert record["messages"] == [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "Hello?"},
        {"role": "assistant", "content": "Hi."},
    ]


def test_messages_parquet_with_mapping(root: Path, work: Path) -> None:
    turns = [
        {"speaker": "user", "said": "Why is the sky blue?"},
        {"speaker": "assistant", "said": "Rayleigh scattering."},
    ]
    pq.write_table(pa.Table.from_pylist([{"chat": turns}]), "m.parquet")
    pull(root, [src("m", "messages", "m.parquet", fields={"messages": "chat", "role": "speaker", "content": "said"})])
    (record,) = read_records("pulled/m.parquet")
    assert record["messages"] == [
        {"role": "user", "content": "Why is the sky blue?"},
        {"role": "assistant", "content": "Rayleigh scattering."},
    ]


def test_text_documents(root: Path, work: Path) -> None:
    Path("docs/sub").mkdir(parents=True)
    Path("docs/b.md").write_text("# B\n\nSecond document.\n", encoding="utf-8")
    Path("docs/a.txt").write_text("\ufeffFirst document.", encoding="utf-8")  # a BOM is dropped
    Path("docs/sub/c.md").write_text("Third.", encoding="utf-8")
    Path("docs/.hidden.md").write_text("skipped", encoding="utf-8")
    Path("docs/image.png").write_bytes(b"\x89PNG")
    write_jsonl("t.jsonl", [{"body": "A document in a column."}])
    Path("one.md").write_text("A single file.", encoding="utf-8")
    metrics = pull(
        root,
        [
            src("docs", "text", "docs"),
            src("col", "text", "t.jsonl", fields={"text": "body"}),
            src("one", "text", "one.md"),
        ],
    )
    assert metrics == {"total": 5, "kept": 5, "records_docs": 3, "records_col": 1, "records_one": 1}
    docs = sorted(read_records("pulled/docs.parquet"), key=lambda r: r["meta"]["row"])
    assert [(r["meta"]["row"], r["meta"]["path"], r["text"]) for r in docs] == [
        (1, "docs/a.txt", "First document."),
        (2, "docs/b.md", "# B\n\nSecond document."),
        (3, "docs/sub/c.md", "Third."),
    ]
    assert docs[1]["meta"]["source_file"] == "docs"
    assert docs[1]["meta"]["file_sha256"] == hashlib.sha256(Path("docs/b.md").read_bytes()).hexdigest()
    assert {r["kind"] for r in read_record_dir("pulled")} == {"document"}
    (col,) = read_records("pulled/col.parquet")
    assert (col["text"], col["meta"]["row"]) == ("A document in a column.", 1)


def test_rerun_is_byte_identical(root: Path, work: Path) -> None:
    write_jsonl("a.jsonl", ALPACA)
    Path("docs").mkdir()
    Path("docs/x.md").write_text("Some text.", encoding="utf-8")
    sources = [src("a", "alpaca", "a.jsonl", label_field="category"), src("docs", "text", "docs")]
    first = pull(root, sources, out="one")
    second = pull(root, sources, out="two")
    assert first == second
    for name in ("a.parquet", "docs.parquet"):
        assert Path("one", name).read_bytes() == Path("two", name).read_bytes()


def test_failure_keeps_previous_output(root: Path, work: Path) -> None:
    write_jsonl("a.jsonl", ALPACA)
    pull(root, [src("a", "alpaca", "a.jsonl")])
    before = Path("pulled/a.parquet").read_bytes()
    with pytest.raises(StageError):
        pull(root, [src("a", "alpaca", "a.jsonl"), src("b", "alpaca", "missing.jsonl")])
    assert sorted(os.listdir("pulled")) == ["a.parquet"]
    assert Path("pulled/a.parquet").read_bytes() == before


# --- bad input: each stops with file, line and fix, and leaves nothing ----------------


def test_corrupt_jsonl_line(root: Path, work: Path) -> None:
    Path("a.jsonl").write_text(json.dumps(ALPACA[0]) + '\n{"instruction": "x", "output": \n', encoding="utf-8")
    msg = fails(root, [src("a", "alpaca", "a.jsonl")], r"a\.jsonl, line 2: not valid JSON")
    assert "repair or delete line 2" in msg


def test_missing_field_names_columns_and_mapping_fix(root: Path, work: Path) -> None:
    write_jsonl("a.jsonl", [ALPACA[0], {"prompt": "Hi", "response": "Hello"}])
    msg = fails(root, [src("a", "alpaca", "a.jsonl")], r"a\.jsonl, line 2: missing field 'instruction'")
    assert "['prompt', 'response']" in msg
    assert "fields: {instruction: <your column>}" in msg


def test_missing_mapped_field_and_csv_row(root: Path, work: Path) -> None:
    Path("b.csv").write_text("question,reply\nWhat?,That.\n", encoding="utf-8")
    fails(root, [src("b", "qa", "b.csv")], r"b\.csv, row 1 \(line 2\): missing field 'answer'")
    fails(
        root,
        [src("b", "qa", "b.csv", fields={"answer": "response"})],
        r"missing field 'response' \(mapped from 'answer' by `fields:`\).*\['question', 'reply'\]",
    )


def test_non_string_field(root: Path, work: Path) -> None:
    write_jsonl("q.jsonl", [{"question": "2+2?", "answer": 4}])
    fails(root, [src("q", "qa", "q.jsonl")], r"q\.jsonl, line 1: field 'answer' is int .*expected a string")
    write_jsonl("n.jsonl", [{"instruction": "Hi", "output": None}])
    fails(root, [src("n", "alpaca", "n.jsonl")], r"n\.jsonl, line 1: field 'output' is null")


def test_wrong_encoding(root: Path, work: Path) -> None:
    Path("a.jsonl").write_bytes(
        (json.dumps(ALPACA[0]) + "\n").encode() + '{"instruction": "Café", "output": "x"}\n'.encode("latin-1")
    )
    msg = fails(root, [src("a", "alpaca", "a.jsonl")], r"a\.jsonl, line 2: not valid UTF-8 \(byte 0xe9 at byte offset")
    assert "iconv -f latin1 -t utf-8 a.jsonl" in msg
    Path("docs").mkdir()
    Path("docs/x.md").write_bytes("Résumé".encode("cp1252"))
    fails(root, [src("docs", "text", "docs")], r"docs/x\.md, line 1: not valid UTF-8.*iconv")


def test_unknown_format_name_lists_the_formats(root: Path, work: Path) -> None:
    formats = r"'alpaca', 'sharegpt', 'messages', 'qa', 'text' or 'fact'"
    with pytest.raises(StageError, match=r"pull\.sources\.0\.format.*" + formats):
        pull(root, [src("a", "alpacca", "a.jsonl")])
    assert not Path("pulled").exists()


def test_unknown_field_name_and_web_format_rejected_by_params(root: Path, work: Path) -> None:
    with pytest.raises(StageError, match=r"fields \['prompt'\] are not fields of format 'alpaca'"):
        pull(root, [src("a", "alpaca", "a.jsonl", fields={"prompt": "p"})])
    with pytest.raises(StageError, match=r"set `format: text`"):
        pull(root, [src("w", "alpaca", "http://127.0.0.1/x")])


def test_empty_sources(root: Path, work: Path) -> None:
    Path("empty.jsonl").write_text("\n\n", encoding="utf-8")
    fails(root, [src("e", "alpaca", "empty.jsonl")], r"source 'e': empty\.jsonl holds no records.*remove the source")
    Path("empty.json").write_text("[]", encoding="utf-8")
    fails(root, [src("e", "alpaca", "empty.json")], r"holds no records")
    Path("header.csv").write_text("instruction,output\n", encoding="utf-8")
    fails(root, [src("e", "alpaca", "header.csv")], r"holds no records")
    Path("folder").mkdir()
    Path("folder/notes.pdf").write_bytes(b"%PDF")
    fails(root, [src("e", "text", "folder")], r"folder holds no \.md/\.txt files \(found \['notes\.pdf'\]\)")


def test_missing_location_and_unsupported_extension(root: Path, work: Path) -> None:
    fails(root, [src("a", "alpaca", "nope.jsonl")], r"source 'a': nope\.jsonl not found.*correct `location`")
    Path("a.xlsx").write_bytes(b"PK")
    fails(root, [src("a", "alpaca", "a.xlsx")], r"cannot read '\.xlsx' files as format 'alpaca'; supported: \.jsonl")
    Path("a.md").write_text("doc", encoding="utf-8")
    fails(root, [src("a", "alpaca", "a.md")], r"need `format: text`")


def test_malformed_containers(root: Path, work: Path) -> None:
    Path("obj.json").write_text('{"data": []}', encoding="utf-8")
    fails(root, [src("o", "alpaca", "obj.json")], r"obj\.json: expected a JSON array of objects")
    Path("bad.json").write_text('[{"instruction": "a",\n "output": }]', encoding="utf-8")
    fails(root, [src("o", "alpaca", "bad.json")], r"bad\.json, line 2: not valid JSON")
    write_jsonl("list.jsonl", [["not", "an", "object"]])
    fails(root, [src("o", "alpaca", "list.jsonl")], r"list\.jsonl, line 1: expected an object")
    Path("ragged.csv").write_text("instruction,output\nA,B,C\n", encoding="utf-8")
    fails(root, [src("o", "alpaca", "ragged.csv")], r"ragged\.csv, row 1 \(line 2\): 3 fields, but the header has 2")
    Path("broken.parquet").write_bytes(b"PAR1 not really")
    fails(root, [src("o", "alpaca", "broken.parquet")], r"broken\.parquet: not a readable Parquet file")


def test_bad_conversations(root: Path, work: Path) -> None:
    convo = [{"from": "human", "value": "Hi"}, {"from": "bot", "value": "Hello"}]
    Path("s.json").write_text(json.dumps([{"conversations": convo}]), encoding="utf-8")
    msg = fails(
        root, [src("s", "sharegpt", "s.json")], r"s\.json, row 1, conversations\[1\]: unknown 'from' value 'bot'"
    )
    assert "['assistant', 'gpt', 'human', 'system', 'user']" in msg
    write_jsonl("m.jsonl", [{"messages": [{"role": "human", "content": "Hi"}]}])
    fails(root, [src("m", "messages", "m.jsonl")], r"unknown 'role' value 'human'.*\['assistant', 'system', 'user'\]")
    write_jsonl("m.jsonl", [{"messages": [{"role": "user", "text": "Hi"}]}])
    fails(
        root,
        [src("m", "messages", "m.jsonl")],
        r"messages\[0\]: missing field 'content'.*the turn has \['role', 'text'\]",
    )
    write_jsonl("m.jsonl", [{"messages": []}])
    fails(root, [src("m", "messages", "m.jsonl")], r"line 1: field 'messages' is an empty list")
    Path("c.csv").write_text('messages\n"[]"\n', encoding="utf-8")
    fails(root, [src("m", "messages", "c.csv")], r"field 'messages' is str .*expected a list of turns.*CSV cannot hold")


def test_bad_label(root: Path, work: Path) -> None:
    write_jsonl("a.jsonl", [ALPACA[0], {"instruction": "x", "output": "y"}])
    fails(
        root, [src("a", "alpaca", "a.jsonl", label_field="category")], r"line 2: the label column 'category'.* missing"
    )
    Path("d").mkdir()
    Path("d/x.md").write_text("doc", encoding="utf-8")
    fails(root, [src("d", "text", "d", label_field="category")], r"label_field applies to rows of a data file")


# --- the Hub ---------------------------------------------------------------------


def test_hub_offline_is_a_clear_quick_error(root: Path, work: Path) -> None:
    start = time.monotonic()
    msg = fails(
        root,
        [src("h", "alpaca", "hf://steep-test/not-a-dataset", revision="0123abc", split="train")],
        r"cannot reach the Hugging Face Hub for hf://steep-test/not-a-dataset \(revision 0123abc, split train\)",
    )
    assert "offline mode is on" in msg and "export the split to a local file" in msg
    assert time.monotonic() - start < 30


def test_hub_revision_and_split_are_required(root: Path, work: Path) -> None:
    with pytest.raises(StageError, match=r"needs a pinned `revision`"):
        pull(root, [src("h", "alpaca", "hf://org/data")])


def test_hub_rows(root: Path, work: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import datasets

    calls = []

    def fake_load_dataset(name: str, **kwargs: Any) -> list[dict[str, Any]]:
        calls.append((name, kwargs))
        return [{"question": "Largest planet?", "answer": "Jupiter"}, {"question": "Smallest?", "answer": "Mercury"}]

    monkeypatch.setattr(datasets, "load_dataset", fake_load_dataset)
    pull(root, [src("h", "qa", "hf://org/data", revision="v1.0", split="test")])
    assert calls == [("org/data", {"revision": "v1.0", "split": "test"})]
    records = by_row(read_records("pulled/h.parquet"))
    assert [r["meta"] for r in records] == [
        {"source_file": "hf://org/data", "row": 1, "revision": "v1.0", "source_index": 0},
        {"source_file": "hf://org/data", "row": 2, "revision": "v1.0", "source_index": 0},
    ]
    assert records[0]["instruction"] == "Largest planet?"


# --- web pages --------------------------------------------------------------------

PARAGRAPH = (
    "Tidal locking happens when the gravitational pull between two bodies slows the rotation of one of them "
    "until it turns once per orbit, so that it always shows the same face to its partner. "
)
ARTICLE = f"""<!doctype html><html><head><meta charset="utf-8"><title>Tidal locking</title></head><body>
<nav><a href="/">Home</a> | <a href="/about">About us</a> | <a href="/shop">Shop</a></nav>
<article><h1>Tidal locking explained</h1>
<p>{PARAGRAPH * 2}</p>
<p>The Moon is the best-known example: it is tidally locked to the Earth, which is why observers on the ground
always see the same lunar hemisphere, while the far side stayed unseen until spacecraft photographed it.</p>
<p>Over long times, tidal forces also lengthen the Earth's day by a few milliseconds per century.</p>
</article>
<footer>Copyright 2024 Example Press. All rights reserved. Cookie settings.</footer>
</body></html>"""


class Handler(BaseHTTPRequestHandler):
    seen_agents: list[str] = []  # noqa: RUF012 - shared by the test and the server thread

    def do_GET(self) -> None:
        self.seen_agents.append(self.headers.get("User-Agent", ""))
        if self.path == "/article":
            self._send(200, ARTICLE.encode("utf-8"))
        elif self.path == "/big":
            self._send(200, b"<p>" + b"x" * 5000 + b"</p>")
        elif self.path == "/big-streamed":  # no Content-Length: the cap must hold while reading
            self.send_response(200)
            self.send_header("Content-Type", "text/html")
            self.end_headers()
            for _ in range(10):
                self.wfile.write(b"<p>" + b"y" * 1000 + b"</p>")
        elif self.path == "/slow":
            time.sleep(2)
            self._send(200, ARTICLE.encode("utf-8"))
        elif self.path == "/empty":
            self._send(200, b"<html><body></body></html>")
        else:
            self._send(404, b"not found")

    def _send(self, status: int, body: bytes) -> None:
        self.send_response(status)
        self.send_header("Content-Type", "text/html; charset=utf-8")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: Any) -> None:
        pass


@pytest.fixture(scope="module")
def server() -> Any:
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    httpd.daemon_threads = True
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}"
    httpd.shutdown()
    httpd.server_close()


def test_web_page_main_text(root: Path, work: Path, server: str) -> None:
    Handler.seen_agents.clear()
    metrics = pull(root, [src("w", "text", f"{server}/article")])
    assert metrics["records_w"] == 1
    (record,) = read_records("pulled/w.parquet")
    assert record["kind"] == "document"
    assert "Tidal locking happens when" in record["text"] and "The Moon is the best-known example" in record["text"]
    assert "About us" not in record["text"] and "Cookie settings" not in record["text"]
    assert record["meta"] == {
        "source_file": f"{server}/article",
        "row": 1,
        "source_index": 0,
        "file_sha256": hashlib.sha256(ARTICLE.encode("utf-8")).hexdigest(),
    }
    assert Handler.seen_agents == [yaml.safe_load((root / "params.yaml").read_text())["pull"]["web"]["user_agent"]]


def test_web_page_too_large(root: Path, work: Path, server: str) -> None:
    for path in ("/big", "/big-streamed"):
        fails(
            root,
            [src("w", "text", server + path)],
            r"the page is larger than pull\.web\.max_bytes = 4000 bytes",
            **{"pull.web.max_bytes": 4000},
        )


def test_web_page_timeout(root: Path, work: Path, server: str) -> None:
    start = time.monotonic()
    fails(root, [src("w", "text", f"{server}/slow")], r"no complete answer within pull\.web\.timeout_s = 0\.3 s",
          **{"pull.web.timeout_s": 0.3})  # fmt: skip
    assert time.monotonic() - start < 1.5


def test_web_http_error_and_no_text(root: Path, work: Path, server: str) -> None:
    fails(root, [src("w", "text", f"{server}/missing")], r"/missing: HTTP 404 Not Found.*check the URL")
    fails(root, [src("w", "text", f"{server}/empty")], r"/empty: no main text found in the page")


# --- the command line ---------------------------------------------------------------


def _cli(root: Path, work: Path, sources: list[dict[str, Any]]) -> subprocess.CompletedProcess[str]:
    raw = yaml.safe_load((root / "params.yaml").read_text(encoding="utf-8"))
    raw["pull"]["sources"] = sources
    Path("params.yaml").write_text(yaml.safe_dump(raw), encoding="utf-8")
    cmd = [sys.executable, "-m", "stages.curate.pull", "--params", "params.yaml", "--out", "data/pulled"]
    env = {**os.environ, "PYTHONPATH": str(root)}
    return subprocess.run([*cmd, "--metrics", "metrics/pull.json"], cwd=work, env=env, capture_output=True, text=True)


def test_cli_writes_outputs_and_metrics(root: Path, work: Path) -> None:
    write_jsonl("data/sources/a.jsonl", ALPACA)
    done = _cli(root, work, [src("a", "alpaca", "data/sources/a.jsonl")])
    assert done.returncode == 0, done.stderr
    assert json.loads(Path("metrics/pull.json").read_text()) == {"kept": 3, "records_a": 3, "total": 3}
    assert os.listdir("data/pulled") == ["a.parquet"]
    assert "pull params:" in done.stderr


def test_cli_bad_input_is_one_message_without_traceback(root: Path, work: Path) -> None:
    Path("a.jsonl").write_text("{oops\n", encoding="utf-8")
    done = _cli(root, work, [src("a", "alpaca", "a.jsonl")])
    assert done.returncode == 1
    assert "error: a.jsonl, line 1: not valid JSON" in done.stderr
    assert "Traceback" not in done.stderr
    assert not Path("data/pulled").exists() and not Path("metrics/pull.json").exists()
