"""Tests for rnnkit.erc._readers on malformed files: each must give a DataError naming the file, line and field."""

import json

import pytest

from rnnkit.erc._readers import read_dailydialog, read_jsonl, read_table
from rnnkit.erc.records import DataError, Utterance

MELD_HEADER = "Utterance,Speaker,Emotion,Dialogue_ID,Utterance_ID\n"
EMORY_HEADER = "Utterance,Speaker,Emotion,Scene_ID,Utterance_ID,Season,Episode\n"
GOOD_TURN = {"speaker": "A", "text": "Hi."}


def write(path, data):
    """Write ``data`` as given: bytes unchanged, text as UTF-8 (lone surrogates too, to build bad files)."""
    path.write_bytes(data if isinstance(data, bytes) else data.encode("utf-8", "surrogatepass"))
    return path


def jsonl_line(**record):
    return json.dumps({"utterances": [GOOD_TURN]} | record) + "\n"


def read(path):
    """Read ``path`` with the reader its name calls for (labels required where the format has them)."""
    if path.suffix == ".jsonl":
        return read_jsonl(path)
    if path.suffix == ".txt":
        emotions = path.with_name("dialogues_emotion_train.txt")
        return read_dailydialog(path, emotions if emotions.exists() else None)
    return read_table(path, None, require_labels=True)


def raises(match, path, blamed=None):
    """Reading ``path`` fails with one line naming ``blamed`` (default: ``path``) and each part of ``match``."""
    with pytest.raises(DataError) as info:
        read(path)
    message = str(info.value)
    assert "\n" not in message
    for part in [str(blamed or path), *match]:
        assert part in message, (part, message)


# -- the cases named one by one ------------------------------------------------------------------------------------

@pytest.mark.parametrize("line", ["[" * 100_000, '{"utterances": ' + "[" * 100_000, '{"a": ' * 100_000])
def test_deeply_nested_json_line(tmp_path, line):
    path = write(tmp_path / "d.jsonl", jsonl_line() + line + "\n")
    raises(["line 2", "nested too deeply"], path)


@pytest.mark.parametrize("record, field", [
    ({"utterances": [{"speaker": "A", "text": "x\ud800y"}]}, "'utterances[0].text'"),
    ({"utterances": [GOOD_TURN, {"speaker": "\udc80", "text": "x"}]}, "'utterances[1].speaker'"),
    ({"utterances": [{"speaker": "A", "text": "x", "label": "joy\udfff"}]}, "'utterances[0].label'"),
    ({"id": "\ud83d", "utterances": [GOOD_TURN]}, "'id'"),
])
def test_lone_surrogate_in_jsonl(tmp_path, record, field):
    # json.dumps writes the surrogate as a \ud800-style escape, which json.loads turns back into a lone surrogate.
    path = write(tmp_path / "s.jsonl", jsonl_line() + json.dumps(record) + "\n")
    raises(["line 2", field, "lone surrogate"], path)


def test_lone_surrogate_in_csv(tmp_path):
    # UTF-8 bytes cannot carry a surrogate (the strict decoder rejects its encoding), but a Python string escape can.
    raises(["line 2", "0xed", "UTF-8"], write(tmp_path / "a.csv", MELD_HEADER.encode() + b"x\xed\xa0\x80,A,joy,0,0\n"))
    raises(["line 3", "'Speaker'", "lone surrogate U+D800"],
           write(tmp_path / "e.csv", EMORY_HEADER + "Hi.,['A'],Joyful,0,0,1,1\n" + "Hi.,['B\\ud800'],Joyful,0,1,1,1\n"))


@pytest.mark.parametrize("name, data, match", [
    ("t.jsonl", jsonl_line(utterances=[{"speaker": "A", "text": "a\u0000b"}]), ["line 1", "'utterances[0].text'"]),
    ("t.jsonl", jsonl_line(id="d\u0000"), ["line 1", "'id'"]),
    ("t.csv", MELD_HEADER + "Hi.,A,joy,0,0\n" + "a\0b,B,joy,0,1\n", ["line 3", "'Utterance'"]),
    ("t.csv", MELD_HEADER + "Hi.,\0,joy,0,0\n", ["line 2", "'Speaker'"]),
    ("t.csv", EMORY_HEADER + "Hi.,['A\\x00'],Joyful,0,0,1,1\n", ["line 2", "'Speaker'"]),
    ("dialogues_train.txt", "Hi . __eou__\nHi . __eou__ a\0b __eou__\n", ["line 2", "'utterance 2'"]),
])
def test_nul_character(tmp_path, name, data, match):
    raises([*match, "NUL"], write(tmp_path / name, data))


@pytest.mark.parametrize("token", ["\u0663", "\u00b2", "\uff11", "+1", "1_0", "-0", "0x1"])
def test_dailydialog_emotion_ids_are_ascii_digits(tmp_path, token):
    emotions = write(tmp_path / "dialogues_emotion_train.txt", f"0\n0 {token}\n")
    raises(["line 2", "'emotion 2'", repr(token)],
           write(tmp_path / "dialogues_train.txt", "A __eou__\nA __eou__ B __eou__\n"), blamed=emotions)


@pytest.mark.parametrize("value", ["1_7", "\u0663", "\uff11", "+1", "-1", "1e3", "0x1", "1.0", "9" * 5000])
@pytest.mark.parametrize("column", ["Dialogue_ID", "Utterance_ID"])
def test_csv_integer_fields_are_ascii_digits(tmp_path, value, column):
    row = {"Utterance": "Hi.", "Speaker": "A", "Emotion": "joy", "Dialogue_ID": "0", "Utterance_ID": "1"}
    path = write(tmp_path / "m.csv", MELD_HEADER + "Hi.,A,joy,0,0\n" + ",".join((row | {column: value}).values()) + "\n")
    raises(["line 3", repr(column), "expected an integer"], path)


def test_emorynlp_integer_fields_are_ascii_digits(tmp_path):
    raises(["line 2", "'Season'", "'1_0'"], write(tmp_path / "e.csv", EMORY_HEADER + "Hi.,['A'],Joyful,0,0,1_0,1\n"))


def test_jsonl_integer_id_is_non_negative(tmp_path):
    raises(["line 1", "'id'", "-1"], write(tmp_path / "n.jsonl", jsonl_line(id=-1)))


@pytest.mark.parametrize("header", [
    "Utterance,Speaker,Emotion,Dialogue_ID,Utterance_ID,Speaker\n",
    "Speaker,Utterance,Emotion,Dialogue_ID,Utterance_ID,Utterance_ID\n",
])
def test_duplicate_csv_column(tmp_path, header):
    duplicated = header.strip().split(",")[-1]
    path = write(tmp_path / "dup.csv", header + "Hi.,A,joy,0,0,B\n")
    raises(["line 1", repr(duplicated), "appears 2 times"], path)


def test_a_duplicated_column_the_reader_ignores_is_allowed(tmp_path):
    path = write(tmp_path / "m.csv", "Utterance,Speaker,Emotion,Dialogue_ID,Utterance_ID,x,x\nHi.,A,joy,0,0,1,2\n")
    assert read(path)[0].utterances == (Utterance("A", "Hi.", "joy"),)


# -- everything else a malformed file can hold ---------------------------------------------------------------------

MALFORMED = {
    # name: (file name, content, parts of the message)
    "empty csv": ("a.csv", "", ["line 1", "empty file"]),
    "empty csv after a BOM": ("a.csv", "\ufeff", ["line 1", "empty file"]),
    "UTF-16 csv": ("a.csv", (MELD_HEADER + "Hi.,A,joy,0,0\n").encode("utf-16"), ["line 1", "0xff", "UTF-8"]),
    "Latin-1 jsonl": ("a.jsonl", jsonl_line().encode() + b'{"id": "caf\xe9"}\n', ["line 2", "0xe9", "UTF-8"]),
    "header name with a newline": ("a.csv", 'Utterance,"Spea\nker",Emotion,Dialogue_ID,Utterance_ID\n',
                                   ["line 1", "missing column 'Speaker'", "'Spea\\nker'"]),
    "row with a field too many": ("a.csv", MELD_HEADER + "Hi.,A,joy,0,0,9\n", ["line 2", "6 fields", "header has 5"]),
    "row with a field too few": ("a.csv", MELD_HEADER + "Hi.,A,joy,0,0\nHo.,A,joy,0\n",
                                 ["line 3", "4 fields", "header has 5"]),
    "quote never closed": ("a.csv", MELD_HEADER + "Hi.,A,joy,0,0\n" + '"Ho.,A,joy,0,1\nmore,A,joy,0,2\n',
                           ["line 3", "never closed"]),
    "text after a closing quote": ("a.csv", MELD_HEADER + '"Hi."x,A,joy,0,0\n', ["line 2", "expected after"]),
    "field over the csv limit": ("a.csv", MELD_HEADER + '"' + "x" * 200_000 + '",A,joy,0,0\n',
                                 ["line 2", "field larger than field limit"]),
    "carriage return in an unquoted field": ("a.csv", MELD_HEADER + "Hi.\rHo.,A,joy,0,0\n",
                                             ["line 2", "new-line character"]),
    "emorynlp speaker nested deeply": ("e.csv", EMORY_HEADER + "Hi.," + "[" * 100_000 + ",Joyful,0,0,1,1\n",
                                       ["line 2", "'Speaker'"]),
    "emorynlp speaker of unary minuses": ("e.csv", EMORY_HEADER + "Hi.," + "-" * 100_000 + "1,Joyful,0,0,1,1\n",
                                          ["line 2", "'Speaker'"]),
    "emorynlp speaker of additions": ("e.csv", EMORY_HEADER + "Hi.,[" + "1+" * 50_000 + "1],Joyful,0,0,1,1\n",
                                      ["line 2", "'Speaker'"]),
    "emorynlp speaker expression": ("e.csv", EMORY_HEADER + "Hi.,\"['a' * 10]\",Joyful,0,0,1,1\n",
                                    ["line 2", "'Speaker'"]),
    "jsonl array": ("a.jsonl", "[1, 2]\n", ["line 1", "JSON object", "list"]),
    "jsonl number": ("a.jsonl", jsonl_line() + "3\n", ["line 2", "JSON object", "int"]),
    "jsonl string": ("a.jsonl", '"x"\n', ["line 1", "JSON object", "str"]),
    "jsonl NaN": ("a.jsonl", '{"id": NaN, "utterances": []}\n', ["line 1", "NaN is not JSON"]),
    "jsonl Infinity in an ignored field": ("a.jsonl", '{"x": -Infinity, "utterances": [{"speaker": "A", "text": "y"}]}\n',
                                           ["line 1", "-Infinity is not JSON"]),
    "jsonl huge integer": ("a.jsonl", '{"id": ' + "1" * 5000 + ', "utterances": []}\n', ["line 1", "5000 digits"]),
    "jsonl duplicate key": ("a.jsonl", '{"utterances": [], "utterances": [{"speaker": "A", "text": "y"}]}\n',
                            ["line 1", "'utterances'", "twice"]),
    "jsonl duplicate inner key": ("a.jsonl", '{"utterances": [{"speaker": "A", "text": "x", "text": "y"}]}\n',
                                  ["line 1", "'text'", "twice"]),
    "jsonl text of the wrong type": ("a.jsonl", jsonl_line(utterances=[{"speaker": "A", "text": 3}]),
                                     ["line 1", "'utterances[0].text'", "got 3"]),
    "jsonl speaker of the wrong type": ("a.jsonl", jsonl_line(utterances=[{"speaker": ["A"], "text": "x"}]),
                                        ["line 1", "'utterances[0].speaker'", "got ['A']"]),
    "jsonl utterances of the wrong type": ("a.jsonl", jsonl_line(utterances={"a": 1}), ["line 1", "'utterances'"]),
    "jsonl id of the wrong type": ("a.jsonl", jsonl_line(id=1.5), ["line 1", "'id'", "1.5"]),
    "jsonl id true": ("a.jsonl", jsonl_line(id=True), ["line 1", "'id'", "True"]),
    "jsonl carriage returns only": ("a.jsonl", jsonl_line().replace("\n", "\r") * 2, ["line 1", "malformed JSON"]),
}


@pytest.mark.parametrize("name, data, match", MALFORMED.values(), ids=MALFORMED.keys())
def test_malformed_file(tmp_path, name, data, match):
    raises(match, write(tmp_path / name, data))


def test_directory_instead_of_a_file(tmp_path):
    (tmp_path / "dir.jsonl").mkdir()
    raises(["is a directory"], tmp_path / "dir.jsonl")


# -- what must keep working ----------------------------------------------------------------------------------------

def test_valid_edge_cases_still_read(tmp_path):
    csv = write(tmp_path / "m.csv", "\ufeff" + MELD_HEADER + '"Hi,\r\nthere.",A,joy,007,0\r\n\r\n,,,,\n'
                + "x" * 100_000 + ",B,joy,7,1\n")
    dialogues = read(csv)
    assert [d.id for d in dialogues] == ["7"]
    assert dialogues[0].utterances == (Utterance("A", "Hi,\r\nthere.", "joy"), Utterance("B", "x" * 100_000, "joy"))
    assert read(write(tmp_path / "h.csv", MELD_HEADER)) == []
    assert read(write(tmp_path / "e.jsonl", "")) == []
    jsonl = write(tmp_path / "j.jsonl", jsonl_line(id=0) + jsonl_line(id=" d1 ", utterances=[
        {"speaker": "A", "text": "tab\tand \u2028 and \U0001F600", "label": None}]))
    assert [(d.id, d.utterances[0].text) for d in read(jsonl)] == [
        ("0", "Hi."), (" d1 ", "tab\tand \u2028 and \U0001F600")]
    emory = write(tmp_path / "e.csv", EMORY_HEADER + "Hi.,\"['Ann', \"\"Joey's friend\"\"]\",Joyful,0,0,1,1\n")
    assert read(emory)[0].utterances == (Utterance("Ann, Joey's friend", "Hi.", "Joyful"),)
