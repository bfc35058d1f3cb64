"""Tests for rnnkit.erc.data: readers for each format on tiny files, format detection, and every bad-input message."""

import json

import pytest

from rnnkit.erc.corpus import BUILTIN_LABELS, builtin_corpus
from rnnkit.erc.data import (
    DataError,
    Dialogue,
    Utterance,
    detect_format,
    label_set,
    metric_name,
    neutral_label,
    read_file,
    read_split,
    write_jsonl,
)

MELD_HEADER = "Sr No.,Utterance,Speaker,Emotion,Sentiment,Dialogue_ID,Utterance_ID,Season,Episode,StartTime,EndTime\n"
EMORY_HEADER = "Utterance,Speaker,Emotion,Scene_ID,Utterance_ID,Season,Episode,Start_Time,End_Time\n"


def meld_row(text, speaker, emotion, dialogue, utterance):
    return f'1,{text},{speaker},{emotion},neutral,{dialogue},{utterance},1,1,"00:00:01,000","00:00:02,000"\n'


def write(path, text):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")
    return path


def write_meld(directory, rows, split="train"):
    return write(directory / f"{split}_sent_emo.csv", MELD_HEADER + "".join(meld_row(*row) for row in rows))


def write_dailydialog(directory, texts, emotions, part="train"):
    write(directory / part / f"dialogues_{part}.txt", "".join(line + "\n" for line in texts))
    write(directory / part / f"dialogues_emotion_{part}.txt", "".join(line + "\n" for line in emotions))


# -- readers -------------------------------------------------------------------------------------------------------

def test_meld_groups_by_dialogue_and_orders_by_utterance_id(tmp_path):
    write_meld(tmp_path, [
        ("Later.", "Ross", "sadness", 3, 1),
        ("You’re late!", "Monica", "anger", 0, 1),
        ("Hi.", "Joey", "joy", 0, 0),
        ('"Well, hello\nthere."', "Ross", "surprise", 3, 0),
        ("Bye.", "Joey", "neutral", 0, 2),
    ])
    dialogues = read_split(tmp_path, "train")
    assert [d.id for d in dialogues] == ["0", "3"]
    assert dialogues[0].utterances == (
        Utterance("Joey", "Hi.", "joy"), Utterance("Monica", "You’re late!", "anger"),
        Utterance("Joey", "Bye.", "neutral"))
    assert dialogues[1].utterances == (
        Utterance("Ross", "Well, hello\nthere.", "surprise"), Utterance("Ross", "Later.", "sadness"))


def test_meld_dialogues_sort_numerically(tmp_path):
    write_meld(tmp_path, [("a", "A", "joy", 10, 0), ("b", "B", "joy", 9, 0), ("c", "C", "joy", 100, 0)])
    assert [d.id for d in read_split(tmp_path, "train")] == ["9", "10", "100"]


def test_emorynlp_parses_speaker_lists_and_groups_by_scene(tmp_path):
    rows = [
        "Hey.,['Monica Geller'],Joyful,1,0,1,2,00:00,00:01\n",
        "\"Hi, guys.\",\"['Ross Geller', 'Chandler Bing']\",Neutral,1,1,1,2,00:01,00:02\n",
        "Same scene id.,['Joey Tribbiani'],Mad,1,0,1,3,00:00,00:01\n",
        "Earlier.,['Rachel Green'],Scared,0,0,1,2,00:00,00:01\n",
    ]
    write(tmp_path / "emorynlp_dev_final.csv", EMORY_HEADER + "".join(rows))
    assert detect_format(tmp_path) == "emorynlp"
    dialogues = read_split(tmp_path, "dev")
    assert [d.id for d in dialogues] == ["s1e2_scene0", "s1e2_scene1", "s1e3_scene1"]
    assert dialogues[1].utterances == (
        Utterance("Monica Geller", "Hey.", "Joyful"), Utterance("Ross Geller, Chandler Bing", "Hi, guys.", "Neutral"))
    assert dialogues[2].utterances == (Utterance("Joey Tribbiani", "Same scene id.", "Mad"),)


@pytest.mark.parametrize("flat", [False, True])
def test_dailydialog_split_files_alternate_speakers(tmp_path, flat):
    write_dailydialog(tmp_path, ["Hi , there . __eou__ Hello ! __eou__ How are you ? __eou__", "Oh no . __eou__"],
                      ["0 4 6 ", "5 "], part="validation")
    if flat:
        for path in (tmp_path / "validation").iterdir():
            path.rename(tmp_path / path.name)
    assert detect_format(tmp_path) == "dailydialog"
    dialogues = read_split(tmp_path, "dev")
    assert dialogues == [
        Dialogue("1", (Utterance("A", "Hi , there .", "no emotion"), Utterance("B", "Hello !", "happiness"),
                       Utterance("A", "How are you ?", "surprise"))),
        Dialogue("2", (Utterance("A", "Oh no .", "sadness"),)),
    ]


def test_dailydialog_unsplit_files_read_with_read_file(tmp_path):
    text = write(tmp_path / "dialogues_text.txt", "Go . __eou__ No . __eou__\n")
    write(tmp_path / "dialogues_emotion.txt", "1 3\n")
    assert detect_format(tmp_path) == "dailydialog"
    assert read_file(text) == [Dialogue("1", (Utterance("A", "Go .", "anger"), Utterance("B", "No .", "fear")))]
    with pytest.raises(DataError, match="dialogues_text.txt holds no split"):
        read_split(tmp_path, "train")


def test_jsonl_reads_ids_labels_and_skips_blank_lines(tmp_path):
    lines = [
        json.dumps({"id": "a", "utterances": [{"speaker": "Ann", "text": "Hi!", "label": "joy"}]}),
        "",
        json.dumps({"utterances": [{"speaker": "Bob", "text": "Hm.", "label": None},
                                   {"speaker": "Ann", "text": "Well.", "label": "neutral"}]}),
    ]
    write(tmp_path / "test.jsonl", "\n".join(lines) + "\n")
    assert detect_format(tmp_path) == "jsonl"
    assert read_split(tmp_path, "test") == [
        Dialogue("a", (Utterance("Ann", "Hi!", "joy"),)),
        Dialogue("3", (Utterance("Bob", "Hm.", None), Utterance("Ann", "Well.", "neutral"))),
    ]


def test_write_jsonl_round_trips(tmp_path):
    dialogues = [Dialogue("x", (Utterance("Zoë", "Ça va ?", "joy"), Utterance("Max", "Yes.", None)))]
    write_jsonl(tmp_path / "train.jsonl", dialogues)
    assert read_split(tmp_path, "train") == dialogues
    assert "label" not in json.loads((tmp_path / "train.jsonl").read_text(encoding="utf-8"))["utterances"][1]


def test_read_file_infers_format_and_allows_missing_labels(tmp_path):
    csv = write(tmp_path / "input.csv", "Utterance,Speaker,Dialogue_ID,Utterance_ID\nHi.,Ann,0,0\n")
    assert read_file(csv) == [Dialogue("0", (Utterance("Ann", "Hi.", None),))]
    emory = write(tmp_path / "e.csv", "Utterance,Speaker,Scene_ID,Utterance_ID,Season,Episode\nHi.,['Ann'],0,0,1,1\n")
    assert read_file(emory) == [Dialogue("s1e1_scene0", (Utterance("Ann", "Hi.", None),))]
    text = write(tmp_path / "dialogues_test.txt", "Yo . __eou__ Hey . __eou__\n")
    assert read_file(text)[0].utterances == (Utterance("A", "Yo .", None), Utterance("B", "Hey .", None))
    with pytest.raises(DataError, match=r"notes\.txt: cannot tell the format"):
        read_file(write(tmp_path / "notes.txt", "hello\n"))


def test_read_split_builtin_is_the_builtin_corpus(tmp_path):
    assert read_split(tmp_path, "dev", format="builtin") == builtin_corpus("dev")


def test_label_sets_neutral_labels_and_metrics():
    assert label_set("meld", []) == ["anger", "disgust", "fear", "joy", "neutral", "sadness", "surprise"]
    assert label_set("emorynlp", []) == ["Joyful", "Mad", "Neutral", "Peaceful", "Powerful", "Sad", "Scared"]
    assert label_set("dailydialog", [])[0] == "no emotion" == neutral_label("dailydialog")
    assert label_set("builtin", []) == list(BUILTIN_LABELS)
    train = [Dialogue("1", (Utterance("A", "x", "b"), Utterance("B", "y", None), Utterance("A", "z", "a")))]
    assert label_set("jsonl", train) == ["a", "b"]
    assert neutral_label("meld") in label_set("meld", []) and neutral_label("emorynlp") == "Neutral"
    assert metric_name("dailydialog") == "micro_f1_no_neutral"
    assert {metric_name(f) for f in ("meld", "emorynlp", "jsonl", "builtin")} == {"weighted_f1"}
    with pytest.raises(DataError, match="no labels"):
        label_set("jsonl", [Dialogue("1", (Utterance("A", "x"),))])
    with pytest.raises(ValueError, match="format must be one of"):
        metric_name("iemocap")


# -- detection -----------------------------------------------------------------------------------------------------

def test_detect_format_lists_what_it_looked_for(tmp_path):
    with pytest.raises(DataError) as info:
        detect_format(tmp_path)
    for name in ("_sent_emo.csv", "emorynlp_", ".jsonl", "dialogues_text.txt", str(tmp_path)):
        assert name in str(info.value)
    with pytest.raises(DataError, match="not a directory"):
        detect_format(tmp_path / "absent")


def test_detect_format_refuses_a_mixed_directory(tmp_path):
    write_meld(tmp_path, [("Hi.", "A", "joy", 0, 0)])
    write(tmp_path / "dev.jsonl", "")
    with pytest.raises(DataError, match="several formats"):
        detect_format(tmp_path)
    assert read_split(tmp_path, "train", format="meld")[0].utterances[0].text == "Hi."


# -- bad input: each message names the file, the line and the field --------------------------------------------

def raises(match, call, *args, **kwargs):
    with pytest.raises(DataError) as info:
        call(*args, **kwargs)
    for part in match:
        assert part in str(info.value), (part, str(info.value))


def test_missing_column(tmp_path):
    write(tmp_path / "train_sent_emo.csv", "Utterance,Speaker,Dialogue_ID,Utterance_ID\nHi.,A,0,0\n")
    raises(["train_sent_emo.csv", "line 1", "'Emotion'", "missing column"], read_split, tmp_path, "train")


def test_unknown_label_after_a_multiline_row(tmp_path):
    write_meld(tmp_path, [('"two\nlines"', "A", "joy", 0, 0), ("Hi.", "B", "happy", 0, 1)])
    raises(["train_sent_emo.csv", "line 4", "'Emotion'", "'happy'", "anger, disgust"], read_split, tmp_path, "train")


def test_unknown_emorynlp_label_and_bad_speaker(tmp_path):
    path = write(tmp_path / "emorynlp_train_final.csv", EMORY_HEADER + "Hi.,['A'],joy,0,0,1,1,0,0\n")
    raises(["emorynlp_train_final.csv", "line 2", "'Emotion'", "'joy'"], read_split, tmp_path, "train")
    write(path, EMORY_HEADER + "Hi.,Monica,Joyful,0,0,1,1,0,0\n")
    raises(["emorynlp_train_final.csv", "line 2", "'Speaker'", "['Monica Geller']"], read_split, tmp_path, "train")


def test_empty_utterance_text(tmp_path):
    write_meld(tmp_path, [("Hi.", "A", "joy", 0, 0), ("   ", "B", "joy", 0, 1)], split="dev")
    raises(["dev_sent_emo.csv", "line 3", "'Utterance'", "non-empty"], read_split, tmp_path, "dev")
    write(tmp_path / "t.jsonl", json.dumps({"utterances": [{"speaker": "A", "text": " "}]}) + "\n")
    raises(["t.jsonl", "line 1", "'utterances[0].text'"], read_file, tmp_path / "t.jsonl")
    write_dailydialog(tmp_path, ["Hi . __eou__  __eou__ Bye . __eou__"], ["0 0 0"])
    raises(["dialogues_train.txt", "line 1", "'utterance 2'"], read_split, tmp_path, "train", format="dailydialog")


def test_non_integer_id(tmp_path):
    write_meld(tmp_path, [("Hi.", "A", "joy", "x1", 0)])
    raises(["train_sent_emo.csv", "line 2", "'Dialogue_ID'", "'x1'"], read_split, tmp_path, "train")


def test_duplicate_utterance_id(tmp_path):
    write_meld(tmp_path, [("Hi.", "A", "joy", 0, 0), ("Yo.", "B", "joy", 1, 0), ("Again.", "A", "joy", 0, 0)])
    raises(["train_sent_emo.csv", "line 4", "'Utterance_ID'", "duplicate Utterance_ID 0", "first on line 2"],
           read_split, tmp_path, "train")


def test_dialogue_with_no_utterances(tmp_path):
    write(tmp_path / "train.jsonl", json.dumps({"id": "a", "utterances": [{"speaker": "A", "text": "x"}]}) + "\n"
          + json.dumps({"id": "b", "utterances": []}) + "\n")
    raises(["train.jsonl", "line 2", "'utterances'", "no utterances"], read_split, tmp_path, "train")
    write_dailydialog(tmp_path, ["Hi . __eou__", "  "], ["0", ""], part="test")
    raises(["dialogues_test.txt", "line 2", "no utterances"], read_split, tmp_path, "test", format="dailydialog")


def test_non_utf8_byte(tmp_path):
    path = tmp_path / "train_sent_emo.csv"
    path.write_bytes((MELD_HEADER + meld_row("Hi.", "A", "joy", 0, 0)).encode() + b"1,caf\xe9,B,joy,x,0,1,1,1,0,0\n")
    raises(["train_sent_emo.csv", "line 3", "0xe9", "column 6", "UTF-8"], read_split, tmp_path, "train")


def test_malformed_json_and_bad_fields(tmp_path):
    good = json.dumps({"utterances": [{"speaker": "A", "text": "x"}]})
    path = write(tmp_path / "dev.jsonl", good + "\n" + '{"utterances": [\n')
    raises(["dev.jsonl", "line 2", "malformed JSON"], read_split, tmp_path, "dev")
    write(path, good + "\n" + json.dumps({"utterances": [{"text": "x"}]}) + "\n")
    raises(["dev.jsonl", "line 2", "'utterances[0].speaker'"], read_split, tmp_path, "dev")
    write(path, json.dumps({"id": "d", **json.loads(good)}) + "\n" + json.dumps({"id": "d", **json.loads(good)}))
    raises(["dev.jsonl", "line 2", "'id'", "duplicate", "first on line 1"], read_split, tmp_path, "dev")
    write(path, json.dumps({"utterances": [{"speaker": "A", "text": "x", "label": 3}]}) + "\n")
    raises(["dev.jsonl", "line 1", "'utterances[0].label'"], read_split, tmp_path, "dev")
    write(path, "[1, 2]\n")
    raises(["dev.jsonl", "line 1", "JSON object"], read_split, tmp_path, "dev")


def test_unreadable_csv_and_empty_split(tmp_path):
    path = write(tmp_path / "train_sent_emo.csv", MELD_HEADER + meld_row("Hi.", "A", "joy", 0, 0)
                 + meld_row("Hi, you.", "B", "joy", 0, 1))
    raises(["train_sent_emo.csv", "line 3", "not a readable CSV"], read_split, tmp_path, "train")
    write(path, MELD_HEADER)
    raises(["train_sent_emo.csv", "holds no dialogues"], read_split, tmp_path, "train")


def test_missing_split_file(tmp_path):
    write_meld(tmp_path, [("Hi.", "A", "joy", 0, 0)])
    raises([str(tmp_path), "missing test split", "test_sent_emo.csv"], read_split, tmp_path, "test")
    write(tmp_path / "dd" / "train" / "dialogues_train.txt", "Hi . __eou__\n")
    raises(["dialogues_emotion_train.txt", "missing emotion file"], read_split, tmp_path / "dd", "train")


def test_dailydialog_mismatched_counts(tmp_path):
    write_dailydialog(tmp_path, ["A . __eou__ B . __eou__", "C . __eou__"], ["0 0"])
    raises(["dialogues_emotion_train.txt", "line 2", "has 1 lines", "2 dialogues"], read_split, tmp_path, "train")
    write_dailydialog(tmp_path, ["A . __eou__ B . __eou__", "C . __eou__"], ["0 0", "0 1"])
    raises(["dialogues_emotion_train.txt", "line 2", "2 emotion ids for 1 utterances"], read_split, tmp_path, "train")
    write_dailydialog(tmp_path, ["A . __eou__"], ["9"])
    raises(["dialogues_emotion_train.txt", "line 1", "'emotion 1'", "'9'"], read_split, tmp_path, "train")


def test_bad_arguments_are_value_errors(tmp_path):
    with pytest.raises(ValueError, match="split must be one of"):
        read_split(tmp_path, "validation")
    with pytest.raises(ValueError, match="format must be one of"):
        read_split(tmp_path, "train", format="csv")
    with pytest.raises(DataError, match="file not found"):
        read_file(tmp_path / "absent.jsonl")
