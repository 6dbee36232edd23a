"""steep review: the sample is seeded and stratified, score merges rounds and computes Wilson and the test right,
and the report shows each rule's precision beside its counts, marks a rule below its bar with its params line, and
writes metrics/review.json and the curation plots' data.

The run is a few inline records in the real schemas, written where the repo's dvc.yaml says moderate and dedup
write them; the report runs on the report tests' fixture.
"""

from __future__ import annotations

import argparse
import csv
import json
import shutil
from pathlib import Path

import pyarrow.parquet as pq
import pytest
from scipy.stats import binomtest

from stages.commands import review
from stages.core import verdicts
from stages.core.catches import Catch, of_moderated, switch
from stages.core.io import StageError
from stages.core.records import make_record, write_records, write_rejects
from tests.stages import test_report as tr

ROOT = Path(__file__).resolve().parents[2]


def _rec(instruction: str, output: str, row: int, **meta: object) -> dict:
    return make_record(
        source="demo",
        kind="instruction",
        meta={"source_file": "demo.jsonl", "row": row, "source_index": 0, **meta},
        instruction=instruction,
        output=output,
    )


@pytest.fixture
def run_dir(tmp_path: Path) -> Path:
    """A project root with the repo's dvc.yaml and params.yaml, and moderate's and dedup's outputs: 12 flagged
    toxic, 3 canned-response drops, one redaction (its pulled text unredacted), one exact-duplicate drop."""
    for name in ("dvc.yaml", "params.yaml"):
        shutil.copy(ROOT / name, tmp_path / name)
    pulled, moderated = [], []
    for i in range(12):
        r = _rec(f"Tell me about animal {i}.", f"Rats and pigs number {i}.", i)
        pulled.append(r)
        moderated.append({**r, "meta": {**r["meta"], "moderate": {"flags": {"toxic": f"p 0.9{i}"}}}})
    red = _rec("Write a signature.", "Mail me at ann@example.org.", 20)
    pulled.append(red)
    after = {**red, "output": "Mail me at <EMAIL>.", "meta": {**red["meta"], "moderate": {"redacted": {"email": 1}}}}
    survivor = _rec("What is a noun?", "A naming word.", 30)
    moderated += [after, survivor]
    for folder in ("data/pulled", "data/rejected"):
        (tmp_path / folder).mkdir(parents=True)
    write_records(tmp_path / "data" / "pulled" / "demo.parquet", pulled)
    write_records(tmp_path / "data" / "moderated.parquet", moderated)
    write_records(tmp_path / "data" / "curated.parquet", moderated)
    canned = [
        (_rec(f"Q{i}?", f"As an AI language model, no {i}.", 40 + i), "moderate", "canned_response", "m")
        for i in range(3)
    ]
    write_rejects(tmp_path / "data" / "rejected" / "moderate.parquet", canned)
    dup = _rec("What is a noun?", "A naming word!", 31)
    write_rejects(
        tmp_path / "data" / "rejected" / "dedup.parquet",
        [(dup, "dedup", "exact_duplicate", f"duplicate of {survivor['id']}")],
    )
    return tmp_path


def main(argv: list[str]) -> int:
    """``steep <argv>`` with the review command alone (as the entry point parses and runs it)."""
    p = argparse.ArgumentParser(prog="steep")
    review.add_parser(p.add_subparsers(dest="command", required=True))
    args = p.parse_args(argv)
    return review.run(args)


def _sample(run: Path, out: Path, *extra: str) -> list[dict[str, str]]:
    assert main(["review", "sample", "--run", str(run), "--per-reason", "4", "--out", str(out), *extra]) == 0
    if out.suffix == ".html":
        return []
    with out.open(encoding="utf-8", newline="") as f:
        return list(csv.DictReader(f))


def test_sample_is_seeded_and_stratified(run_dir: Path, tmp_path: Path) -> None:
    a = _sample(run_dir, tmp_path / "a.csv", "--seed", "7")
    _sample(run_dir, tmp_path / "b.csv", "--seed", "7")
    c = _sample(run_dir, tmp_path / "c.csv", "--seed", "8")
    assert (tmp_path / "a.csv").read_bytes() == (tmp_path / "b.csv").read_bytes()
    per = {r: sum(1 for x in a if x["reason"] == r) for r in {x["reason"] for x in a}}
    # every reason its own stratum: 4 of the 12 flags, all of the smaller ones
    assert per == {"flagged_toxic": 4, "canned_response": 3, "redacted_pii_email": 1, "exact_duplicate": 1}
    assert [x["id"] for x in a if x["reason"] == "flagged_toxic"] != [
        x["id"] for x in c if x["reason"] == "flagged_toxic"
    ]
    assert all(x["verdict"] == "" for x in a)
    rewrite = next(x for x in a if x["reason"] == "redacted_pii_email")
    assert "<EMAIL>" in rewrite["text"] and "ann@example.org" in rewrite["compare"]  # after, and before
    assert "[ann@example.org -> <EMAIL>]" in rewrite["compare"]  # and what changed
    assert rewrite["action"] == "rewrite" and rewrite["detail"] == "1 email span(s) redacted"
    dup = next(x for x in a if x["reason"] == "exact_duplicate")
    assert (
        "A naming word!" in dup["text"] and "KEPT IN ITS PLACE" in dup["compare"] and "A naming word." in dup["compare"]
    )
    # reviewed records are not drawn again
    (run_dir / "reviews").mkdir()
    picked = [x["id"] for x in a if x["reason"] == "flagged_toxic"]
    lines = ["id,reason,verdict,note", *(f"{i},flagged_toxic,wrong," for i in picked)]
    (run_dir / "reviews" / "r1.csv").write_text("\n".join(lines) + "\n", encoding="utf-8")
    again = _sample(run_dir, tmp_path / "d.csv", "--seed", "7")
    assert not {x["id"] for x in again if x["reason"] == "flagged_toxic"} & set(picked)
    # the HTML sheet: a radio button per verdict per record, and the download button
    _sample(run_dir, tmp_path / "s.html", "--seed", "7")
    page = (tmp_path / "s.html").read_text(encoding="utf-8")
    assert page.count('class="row"') == 9 and page.count('type="radio"') == 27 and 'id="download"' in page


def test_wilson_and_test_match_scipy() -> None:
    for k, n in ((8, 10), (0, 25), (25, 25), (56, 60)):
        lo, hi = binomtest(k, n).proportion_ci(method="wilson")
        assert verdicts.wilson(k, n) == pytest.approx((lo, hi), abs=1e-9)
        assert verdicts.p_below(k, n, 0.9) == pytest.approx(binomtest(k, n, 0.9, alternative="less").pvalue)
    assert verdicts.holm([0.01, 0.04, 0.03]) == pytest.approx([0.03, 0.06, 0.06])
    assert verdicts.detectable(10, 0.9) == pytest.approx(0.6)  # 6 of 10 right: p 0.013; 7 of 10: p 0.070
    assert verdicts.detectable(2, 0.9) == 0.0  # only 0 of 2 right (p 0.01) tells a rule from 0.9
    assert verdicts.detectable(1, 0.9) is None  # 0 of 1 right is p 0.1


def test_score_merges_rounds_and_prints_precision(run_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    rows = _sample(run_dir, tmp_path / "s.csv", "--seed", "7")
    toxic = [x["id"] for x in rows if x["reason"] == "flagged_toxic"]
    canned = [x["id"] for x in rows if x["reason"] == "canned_response"]
    round1 = tmp_path / "round1.csv"
    marks = [(toxic[0], "flagged_toxic", "wrong"), (toxic[1], "flagged_toxic", "right")]
    marks += [(i, "canned_response", "right") for i in canned] + [(toxic[2], "flagged_toxic", "skip")]
    round1.write_text("id,reason,verdict,note\n" + "".join(f"{i},{r},{v},\n" for i, r, v in marks), encoding="utf-8")
    assert main(["review", "score", str(round1), "--run", str(run_dir), "--name", "t0"]) == 0
    round2 = tmp_path / "round2.csv"  # changes one verdict, adds one
    round2.write_text(
        f"id,reason,verdict,note\n{toxic[1]},flagged_toxic,Wrong,mention\n{toxic[3]},flagged_toxic,wrong,\n",
        encoding="utf-8",
    )
    capsys.readouterr()
    assert main(["review", "score", str(round2), "--run", str(run_dir), "--name", "t0"]) == 0
    out = capsys.readouterr().out
    assert "1 added, 1 changed" in out
    kept = verdicts.read_verdicts(run_dir / "reviews" / "t0.csv")
    assert len(kept) == 7 and kept[(toxic[1], "flagged_toxic")] == {"verdict": "wrong", "note": "mention"}
    header = (run_dir / "reviews" / "t0.csv").read_text(encoding="utf-8").splitlines()[0]
    assert header == "id,reason,verdict,note"  # ids and verdicts: no record text
    line = next(x for x in out.splitlines() if x.startswith("flagged_toxic"))
    assert line.split()[2:6] == ["12", "3", "0", "0.00"] and "0.00–0.56" in line and "BELOW BAR" in line
    assert 'moderate.actions.toxic: "off"' in out
    canned_line = next(x for x in out.splitlines() if x.startswith("canned_response"))
    assert canned_line.split()[2:6] == ["3", "3", "3", "1.00"] and "BELOW" not in canned_line


def test_score_refuses_a_bad_verdict(run_dir: Path, tmp_path: Path) -> None:
    sheet = tmp_path / "bad.csv"
    sheet.write_text("id,reason,verdict\nabc,toxic,right\nabd,toxic,maybe\n", encoding="utf-8")
    with pytest.raises(StageError, match=f"{sheet}:3: verdict 'maybe'"):
        main(["review", "score", str(sheet), "--run", str(run_dir)])
    (tmp_path / "nocol.csv").write_text("id,reason\nabc,toxic\n", encoding="utf-8")
    with pytest.raises(StageError, match="no column"):
        verdicts.read_verdicts(tmp_path / "nocol.csv")


def test_catches_and_switches() -> None:
    rec = _rec(
        "q",
        "a",
        1,
        moderate={
            "flags": {"truncated_output": "ends mid-word"},
            "normalized": ["noinput"],
            "cleanlab": {"is_outlier": True, "outlier_score": 0.01},
        },
    )
    found = {c.reason: c for c in of_moderated(rec)}
    assert set(found) == {"flagged_truncated_output", "normalized_noinput", "flagged_cleanlab_outlier"}
    assert found["normalized_noinput"] == Catch(
        "normalized_noinput", rec["id"], "moderate", "rewrite", "placeholder input blanked"
    )
    assert switch("moderate", "too_short", "drop") == "moderate.actions.too_short: flag"
    assert switch("moderate", "flagged_repetitive", "flag") == 'moderate.actions.repetitive: "off"'
    assert switch("dedup", "minhash_duplicate", "drop") == "dedup.minhash.action: flag"
    assert switch("moderate", "redacted_pii_phone", "rewrite").startswith("moderate.pii.entities: leave out phone")


def test_report_shows_precision_and_marks_below_bar(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    tr.build_fixture(tmp_path)
    monkeypatch.chdir(tmp_path)
    rows = pq.read_table("data/rejected/moderate.parquet").to_pylist()
    canned = sorted(r["id"] for r in rows if r["reason"] == "canned_response")
    flagged = next(r["id"] for r in pq.read_table("data/moderated.parquet").to_pylist() if "toxic" in r["meta"])
    (tmp_path / "reviews").mkdir()
    (tmp_path / "reviews" / "round1.csv").write_text(
        "id,reason,verdict,note\n"
        + "".join(f"{i},canned_response,{v},\n" for i, v in zip(canned, ("right", "right", "wrong"), strict=True))
        + f"{flagged},flagged_toxic,right,\n0000000000000000,flagged_toxic,wrong,gone\n",
        encoding="utf-8",
    )
    md, _ = tr.run_report()
    funnel = md.split("### Drops per reason")[1].split("\n### ")[0]
    assert "| moderate | `canned_response` | 6 | 1.5% | 0.67 (n 3), below 0.90 |" in funnel
    assert "| moderate | `control_characters` | 3 | 0.8% | — |" in funnel  # not reviewed
    flags = md.split("## Flagged, kept records")[1].split("\n## ")[0]
    assert "| `toxic` | 1 | 1.00 (n 1) |" in flags
    section = md.split("## Rule precision, from the reviews")[1].split("\n## ")[0]
    assert "5 verdicts in `reviews`" in section and "1 on records the run no longer catches" in section
    assert "`moderate.actions.canned_response: flag`" in section
    assert (
        "| moderate | `canned_response` | drop | 3 | 2 / 3 | 0.67 | 0.21–0.94 | 0.90 | 0.542 | 0.33 | below |"
        in section
    )
    metrics = json.loads(Path("metrics/review.json").read_text(encoding="utf-8"))
    assert metrics["canned_response"] == {
        "below_bar": 1,
        "ci_high": 0.9385,
        "ci_low": 0.2077,
        "n": 3,
        "p_holm": 0.5420,
        "precision": 0.6667,
        "right": 2,
    }
    assert metrics["flagged_toxic"]["below_bar"] == 0 and metrics["verdicts_left_out"] == 1
    funnel_csv = Path("metrics/funnel.csv").read_text(encoding="utf-8").splitlines()
    assert funnel_csv[:3] == ["stage,kept,dropped", "pull,390,0", "moderate,377,13"]
    drops_csv = Path("metrics/drops.csv").read_text(encoding="utf-8").splitlines()
    assert drops_csv[:2] == ["reason,stage,records", "moderate: canned_response,moderate,6"]


def test_report_without_reviews_says_how(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    tr.build_fixture(tmp_path)
    monkeypatch.chdir(tmp_path)
    md, _ = tr.run_report()
    assert "Not measured (no reviews folder). Draw a sample" in md and "`steep review sample" in md
    assert json.loads(Path("metrics/review.json").read_text(encoding="utf-8")) == {
        "verdicts": 0,
        "verdicts_left_out": 0,
    }
    assert "| `reviews` | review verdicts (CSV files) | not found |" in md
