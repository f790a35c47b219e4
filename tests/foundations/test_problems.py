"""Problem ingestion: every format, gold extraction, stable ids, errors naming file/line/field."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest

from cotdistill.answers.gold import extract_gold
from cotdistill.errors import InputError
from cotdistill.problems import ProblemFields, in_shard, load_problems, parse_shard, question_id

ROWS = [
    {"id": "a", "question": "Tom has 3 apples and gets 2 more. How many?", "answer": "... #### 5"},
    {"id": "b", "question": "What is 1/2 + 1/4?", "answer": "So it is \\boxed{\\frac{3}{4}}."},
    {"id": "c", "question": "Name the capital of France.", "answer": "Paris"},
]
GOLD = ["5", "\\frac{3}{4}", "Paris"]


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def write_json(path: Path, rows: list[dict]) -> Path:
    path.write_text(json.dumps(rows, indent=2))
    return path


def write_csv(path: Path, rows: list[dict]) -> Path:
    with open(path, "w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    return path


def write_parquet(path: Path, rows: list[dict]) -> Path:
    import pyarrow as pa
    import pyarrow.parquet as pq

    pq.write_table(pa.Table.from_pylist(rows), path)
    return path


def write_dataset(path: Path, rows: list[dict]) -> Path:
    from datasets import Dataset

    Dataset.from_list(rows).save_to_disk(str(path))
    return path


WRITERS = {
    "data.jsonl": write_jsonl,
    "data.json": write_json,
    "data.csv": write_csv,
    "data.parquet": write_parquet,
    "dataset_dir": write_dataset,
}


@pytest.mark.parametrize("name", list(WRITERS))
def test_every_format_reads_the_same_problems(tmp_path: Path, name: str) -> None:
    path = WRITERS[name](tmp_path / name, ROWS)
    problems = load_problems(path)
    assert [p.id for p in problems] == ["a", "b", "c"]
    assert [p.question for p in problems] == [r["question"] for r in ROWS]
    assert [p.gold_answer for p in problems] == GOLD
    # Text formats count file lines (a CSV header is line 1); the others count rows.
    assert problems[1].source == f"{path}:{3 if name.endswith('.csv') else 2}"


@pytest.mark.parametrize("name", list(WRITERS))
def test_question_hash_id_is_the_same_in_every_format(tmp_path: Path, name: str) -> None:
    rows = [{"question": r["question"], "answer": r["answer"]} for r in ROWS]
    problems = load_problems(WRITERS[name](tmp_path / name, rows))
    assert [p.id for p in problems] == [question_id(r["question"]) for r in ROWS]


def test_ids_are_stable_across_runs_and_whitespace(tmp_path: Path) -> None:
    first = load_problems(write_jsonl(tmp_path / "a.jsonl", [{"question": "What is  2 + 2?"}]))
    again = load_problems(write_jsonl(tmp_path / "b.jsonl", [{"question": " What is 2 +\n2? "}]))
    assert first[0].id == again[0].id == question_id("What is 2 + 2?")
    assert first[0].id.startswith("q-") and len(first[0].id) == 18
    assert question_id("What is 2 + 3?") != first[0].id


def test_id_field_wins_over_the_question_hash(tmp_path: Path) -> None:
    rows = [{"id": 7, "question": "Q one"}, {"id": "", "question": "Q two"}]
    problems = load_problems(write_jsonl(tmp_path / "p.jsonl", rows))
    assert problems[0].id == "7"  # numbers become text, the same in JSON and CSV
    assert problems[1].id == question_id("Q two")  # an empty id falls back to the hash


def test_field_names_are_configurable_and_defaults_cover_problem_solution(tmp_path: Path) -> None:
    path = write_jsonl(
        tmp_path / "math.jsonl",
        [{"problem": "Compute 2^3.", "solution": "We get $\\boxed{8}$.", "uid": "m1"}],
    )
    default = load_problems(path)[0]
    assert (default.question, default.gold_answer) == ("Compute 2^3.", "8")
    assert default.id == question_id("Compute 2^3.")  # `uid` is not the default id field

    custom_path = write_jsonl(
        tmp_path / "custom.jsonl", [{"uid": "x9", "prompt": "Say hi.", "target": "hi"}]
    )
    fields = ProblemFields(question=("prompt",), answer=("target",), id="uid")
    custom = load_problems(custom_path, fields)[0]
    assert (custom.id, custom.question, custom.gold_answer) == ("x9", "Say hi.", "hi")


def test_missing_answer_gives_no_gold(tmp_path: Path) -> None:
    problems = load_problems(write_jsonl(tmp_path / "p.jsonl", [{"question": "Q?"}]))
    assert problems[0].gold_answer is None


@pytest.mark.parametrize(
    ("solution", "fmt", "gold"),
    [
        ("2 + 3 = <<2+3=5>>5\n#### 5", "auto", "5"),
        ("#### 1,234", "auto", "1234"),
        ("#### $18.", "gsm8k", "18"),
        ("The area is \\boxed{\\frac{\\sqrt{3}}{2}}.", "auto", "\\frac{\\sqrt{3}}{2}"),
        ("\\boxed{1} then \\boxed{2}", "boxed", "2"),
        ("42", "auto", "42"),
        ("#### 5", "raw", "#### 5"),
        ("\\boxed{3}", "gsm8k", "\\boxed{3}"),
    ],
)
def test_gold_extraction(solution: str, fmt: str, gold: str) -> None:
    assert extract_gold(solution, fmt) == gold


def test_answer_format_is_applied_when_loading(tmp_path: Path) -> None:
    path = write_jsonl(tmp_path / "p.jsonl", [{"question": "Q", "answer": "x\n#### 5"}])
    assert load_problems(path, ProblemFields(answer_format="raw"))[0].gold_answer == "x\n#### 5"
    assert load_problems(path, ProblemFields(answer_format="gsm8k"))[0].gold_answer == "5"


def expect_error(path: Path, line: int | None, field: str | None, words: str) -> InputError:
    with pytest.raises(InputError) as info:
        load_problems(path)
    error = info.value
    assert (error.file, error.line, error.field) == (str(path), line, field)
    assert words in error.message
    return error


def test_missing_question_names_file_line_and_field(tmp_path: Path) -> None:
    path = write_jsonl(tmp_path / "p.jsonl", [{"question": "ok"}, {"text": "no question here"}])
    error = expect_error(path, 2, "question", "missing question")
    assert str(error).startswith(f"{path}:2, field 'question'")


def test_empty_question_names_the_field_that_was_found(tmp_path: Path) -> None:
    path = write_jsonl(tmp_path / "p.jsonl", [{"question": "ok"}, {"problem": "   "}])
    expect_error(path, 2, "problem", "question is empty")


def test_question_that_is_not_text(tmp_path: Path) -> None:
    expect_error(write_jsonl(tmp_path / "p.jsonl", [{"question": 5}]), 1, "question", "text")


def test_duplicate_ids(tmp_path: Path) -> None:
    rows = [{"id": "a", "question": "one"}, {"id": "b", "question": "two"},
            {"id": "a", "question": "three"}]
    error = expect_error(write_jsonl(tmp_path / "p.jsonl", rows), 3, "id", "duplicate id 'a'")
    assert "first seen on line 1" in error.message


def test_duplicate_questions_without_ids(tmp_path: Path) -> None:
    rows = [{"question": "same"}, {"question": "same "}]
    expect_error(write_jsonl(tmp_path / "p.jsonl", rows), 2, "question", "duplicate question")


def test_csv_errors_name_the_file_line(tmp_path: Path) -> None:
    path = tmp_path / "p.csv"
    path.write_text("id,question,answer\n1,first,1\n2,,2\n")
    expect_error(path, 3, "question", "question is empty")


def test_json_and_parquet_errors_name_the_item(tmp_path: Path) -> None:
    expect_error(
        write_json(tmp_path / "p.json", [{"question": "a"}, {"answer": "1"}]), 2, "question",
        "missing question",
    )
    expect_error(
        write_parquet(tmp_path / "p.parquet", [{"id": "x", "question": "a"},
                                               {"id": "x", "question": "b"}]),
        2, "id", "duplicate id",
    )


def test_blank_lines_keep_jsonl_line_numbers(tmp_path: Path) -> None:
    path = tmp_path / "p.jsonl"
    path.write_text('{"question": "a"}\n\n{"question": ""}\n')
    expect_error(path, 3, "question", "question is empty")


@pytest.mark.parametrize(
    ("name", "content", "line", "words"),
    [
        ("bad.jsonl", '{"question": "a"}\n{"question": \n', 2, "invalid JSON"),
        ("list.jsonl", '["not", "an", "object"]\n', 1, "expected a JSON object"),
        ("bad.json", '[{"question": "a"},\n oops]', 2, "invalid JSON"),
        ("bad.txt", "question\nhello\n", None, "unknown problem file type"),
        ("empty.jsonl", "\n", None, "no problems found"),
    ],
)
def test_unreadable_files(tmp_path: Path, name: str, content: str, line: int | None,
                          words: str) -> None:
    path = tmp_path / name
    path.write_text(content)
    expect_error(path, line, None, words)


def test_missing_file_non_utf8_and_non_dataset_folder(tmp_path: Path) -> None:
    expect_error(tmp_path / "absent.jsonl", None, None, "file not found")
    latin = tmp_path / "latin.csv"
    latin.write_bytes("question\ncaf\xe9\n".encode("latin-1"))
    expect_error(latin, None, None, "not UTF-8")
    corrupt = tmp_path / "corrupt.parquet"
    corrupt.write_bytes(b"not parquet at all")
    expect_error(corrupt, None, None, "cannot read Parquet")
    folder = tmp_path / "folder"
    folder.mkdir()
    expect_error(folder, None, None, "not a datasets folder")


def test_dataset_dict_folder_is_refused(tmp_path: Path) -> None:
    from datasets import Dataset, DatasetDict

    path = tmp_path / "dd"
    DatasetDict({"train": Dataset.from_list(ROWS)}).save_to_disk(str(path))
    expect_error(path, None, None, "several splits")


def test_sharding_is_a_deterministic_partition() -> None:
    ids = [f"p{i}" for i in range(300)] + [question_id(f"question {i}") for i in range(100)]
    for count in (1, 3, 8):
        shards = [[pid for pid in ids if in_shard(pid, i, count)] for i in range(count)]
        assert sorted(pid for shard in shards for pid in shard) == sorted(ids)
        assert all(shards)  # 400 ids spread over at most 8 shards: none is empty
    assert parse_shard("2/5") == (2, 5)
    for bad in ("5/5", "0/0"):
        with pytest.raises(InputError) as info:
            parse_shard(bad)
        assert info.value.field == "shard"


# --- inputs as people have them: Excel CSVs, questions made of several fields, categories ----


def test_excel_csv_with_a_byte_order_mark_reads(tmp_path: Path) -> None:
    path = tmp_path / "excel.csv"
    # Excel's "CSV UTF-8" starts with EF BB BF; without utf-8-sig the column is "\ufeffquestion".
    path.write_bytes("\ufeffquestion,answer\r\nWhat is 2 + 2?,4\r\nWhat is 3 + 3?,6\r\n"
                     .encode("utf-8"))
    problems = load_problems(path)
    assert [(p.question, p.gold_answer) for p in problems] == [
        ("What is 2 + 2?", "4"), ("What is 3 + 3?", "6")]
    assert problems[0].source == f"{path}:2"


def test_jsonl_with_a_byte_order_mark_reads(tmp_path: Path) -> None:
    path = tmp_path / "bom.jsonl"
    path.write_bytes(b"\xef\xbb\xbf" + json.dumps(ROWS[0]).encode() + b"\n")
    assert [p.id for p in load_problems(path)] == ["a"]


SVAMP = [
    {"ID": "s1", "Body": "Jack had 8 pens and Mary had 5 pens.", "Question": "How many in all?",
     "Answer": 13, "Type": "Addition"},
    {"ID": "s2", "Body": "There are 9 birds; 4 fly away.", "Question": "How many are left?",
     "Answer": 5, "Type": "Subtraction"},
]


def test_question_template_joins_fields(tmp_path: Path) -> None:
    path = write_jsonl(tmp_path / "svamp.jsonl", SVAMP)
    fields = ProblemFields(answer=("Answer",), id="ID", template="{Body} {Question}",
                           category="Type")
    problems = load_problems(path, fields)
    assert [p.question for p in problems] == [
        "Jack had 8 pens and Mary had 5 pens. How many in all?",
        "There are 9 birds; 4 fly away. How many are left?",
    ]
    assert [p.gold_answer for p in problems] == ["13", "5"]
    assert [p.category for p in problems] == ["Addition", "Subtraction"]
    # Without the template the rows have no question field at all.
    with pytest.raises(InputError, match="missing question"):
        load_problems(path, ProblemFields(answer=("Answer",), id="ID"))


def test_question_template_missing_field_names_file_line_and_field(tmp_path: Path) -> None:
    rows = [SVAMP[0], {k: v for k, v in SVAMP[1].items() if k != "Body"}]
    path = write_jsonl(tmp_path / "svamp.jsonl", rows)
    with pytest.raises(InputError) as info:
        load_problems(path, ProblemFields(id="ID", template="{Body} {Question}"))
    assert (info.value.file, info.value.line, info.value.field) == (str(path), 2, "Body")


@pytest.mark.parametrize("template", ["{Body", "{} {Question}", "{0}", "{row.Body}",
                                      "no fields at all", "{Body[0]}"])
def test_bad_question_template_is_an_input_error(tmp_path: Path, template: str) -> None:
    path = write_jsonl(tmp_path / "svamp.jsonl", SVAMP)
    with pytest.raises(InputError) as info:
        load_problems(path, ProblemFields(id="ID", template=template))
    assert info.value.field == "question_template"


def test_category_field_missing_in_a_row_is_an_error(tmp_path: Path) -> None:
    rows = [{**ROWS[0], "subject": "arithmetic"}, ROWS[1]]
    path = write_jsonl(tmp_path / "p.jsonl", rows)
    with pytest.raises(InputError) as info:
        load_problems(path, ProblemFields(category="subject"))
    assert (info.value.line, info.value.field) == (2, "subject")
    # Not asked for: no category, and no error.
    assert [p.category for p in load_problems(path)] == [None, None]


def test_category_and_template_reach_traces_and_evaluation_rows(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from cotdistill.backends.fake import FakeBackend
    from cotdistill.cli import main as cli_main
    from cotdistill.evaluate.config import EvaluateConfig
    from cotdistill.evaluate.stage import run_evaluate
    from cotdistill.generate.config import GenerateConfig
    from cotdistill.generate.stage import run_generate

    path = write_jsonl(tmp_path / "svamp.jsonl", SVAMP)
    keys = {"id_field": "ID", "answer_field": ["Answer"], "question_template": "{Body} {Question}",
            "category_field": "Type"}
    run_generate(GenerateConfig(problems=path, out=tmp_path / "gen", prompt_template="plain",
                                **keys), backend=FakeBackend())
    traces = [json.loads(line) for line in (tmp_path / "gen" / "traces.jsonl").open()]
    assert [(t["problem_id"], t["category"]) for t in traces] == [
        ("s1", "Addition"), ("s2", "Subtraction")]
    assert traces[0]["question"] == "Jack had 8 pens and Mary had 5 pens. How many in all?"

    run_evaluate(EvaluateConfig(problems=path, out=tmp_path / "eval", model=["teacher=t"],
                                bootstrap_resamples=20, **keys),
                 lambda name: FakeBackend(name))
    rows = [json.loads(line) for line in (tmp_path / "eval" / "results.jsonl").open()]
    assert [(r["problem_id"], r["category"]) for r in rows] == [
        ("s1", "Addition"), ("s2", "Subtraction")]

    # The flags exist on both commands, and a bad template stops before any model loads.
    for command in ("generate", "evaluate"):
        extra = ["--model", "teacher=never-loaded"] if command == "evaluate" else []
        code = cli_main([command, "--problems", str(path), "--out", str(tmp_path / command),
                         "--id-field", "ID", "--question-template", "{Body} {Nope}",
                         "--category-field", "Type", *extra])
        assert code == 2
        err = capsys.readouterr().err
        assert "svamp.jsonl:1, field 'Nope': question_template needs field 'Nope'" in err
