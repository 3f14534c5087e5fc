"""Zero-shot prompts and scoring for D-BETA: the one place both the pipeline and `eval.zero_shot` take them from.

Prompts. `prompts_dbeta.json` maps class codes to "<full name>. <what the 12-lead ECG shows>." A candidate label
becomes text by `PromptSet.resolve(label, dataset=None, style=...)`, in this order:
  1. with `dataset=` (a dataset or label-set name: "ptbxl", "ptbxl_super", "cpsc2018"/"icbeb", "csn"/"chapman",
     "physionet2021"/"cinc2021", "code_test"), that dataset's own spellings (`dataset_aliases`, case-insensitive;
     CSN's "AF" is atrial flutter); an unknown dataset name is an error;
  2. a prompt key spelled exactly;
  3. for a code-like label only (no whitespace, code characters, a capital or a digit: "Afib", "1dAVb"): a key
     ignoring case, then a code-like alias (`aliases` entries without spaces, ignoring case). A lower-case word
     stays free text ("st" may mean the ST segment, "lad" the artery).
Anything else is free text, encoded as written; a code-like label that matches nothing is used as text with a
warning naming close known codes. `style="description"` encodes the whole entry, `"name"` its first sentence;
the default is the checkpoint's `config.zero_shot_prompt_style` (`prompt_style_for`).

Members. A class defined as a union of finer ones (PTB-XL's "_AVB" is 1AVB, 2AVB or 3AVB) can also be described
by its members: with `members=True`, a label of a label set that has a `members` table (the PTB-XL sub- and
superclasses, from scp_statements.csv; the table is chosen by `dataset=`, "ptbxl_sub" or "ptbxl_super") is encoded
as its own text and each member's. A label with several texts is scored with the mean of their text features
(`label_features`; with a dot-product similarity, the mean of their logits); a label with one text is scored as
before. A class of the other label set ("MI" under "ptbxl_sub") is refused.

Scoring. The logits are the model's own (`zero_shot_logits`, scoring "model": `DBetaModel.similarity`, what
`forward` returns as `logits_per_ecg`: a dot product in "fixed" mode, SigLIP's scaled cosine plus bias in
"learnable" mode). `label_scores` turns them into scores: a softmax over the labels, or an independent sigmoid per
label with `multi_label=True` and always for a single label (a softmax over one label is 1 whatever the ECG).
"cosine" and "dot" are explicit alternatives for evaluation only.

This file is remote code: at module level it imports only torch, transformers, numpy and the standard library.
"""

from __future__ import annotations

import difflib
import json
import os
import re
import warnings
from pathlib import Path
from typing import Callable, Dict, List, Optional, Sequence, Tuple, Union

import torch

from .configuration_dbeta import PROMPT_STYLES

PROMPTS_FILENAME = "prompts_dbeta.json"
SCORINGS = ("model", "cosine", "dot")
_CODE_RE = re.compile(r"[A-Za-z0-9_/()+\-]{1,20}")

#: Dataset or label-set name (case-insensitive, "-" read as "_") -> the `dataset_aliases` table that applies.
DATASET_ALIAS_GROUPS: Dict[str, str] = {
    "ptbxl": "ptbxl", "ptb_xl": "ptbxl", "ptbxl_super": "ptbxl", "ptbxl_sub": "ptbxl", "ptbxl_form": "ptbxl",
    "ptbxl_rhythm": "ptbxl",
    "cpsc2018": "cpsc2018", "icbeb": "cpsc2018",
    "code_test": "code_test", "codetest": "code_test",
    "physionet2021": "physionet2021", "cinc2021": "physionet2021",
    "csn": "csn", "chapman": "csn",
}

__all__ = [
    "PROMPTS_FILENAME",
    "SCORINGS",
    "DATASET_ALIAS_GROUPS",
    "PromptSet",
    "load_prompt_set",
    "looks_like_code",
    "prompt_text",
    "prompt_style_for",
    "zero_shot_logits",
    "label_features",
    "label_scores",
]


#: the fields of a prompt-set file (prompts_dbeta.json); any other is refused
PROMPT_SET_FIELDS = ("version", "note", "prompts", "aliases", "dataset_aliases", "members")


def looks_like_code(label: str) -> bool:
    """No whitespace, only code characters, and at least one capital letter or digit ("AFIB", "1dAVb", "NST_")."""
    label = str(label).strip()
    return bool(_CODE_RE.fullmatch(label)) and any(ch.isupper() or ch.isdigit() for ch in label)


def _label_set_key(name: str) -> str:
    """A dataset or label-set name as the tables key it: case-insensitive, "-" read as "_"."""
    return str(name).strip().casefold().replace("-", "_")


def prompt_text(entry: str, style: str = "description") -> str:
    """What a prompt-set entry ("<full name>. <what the ECG shows>.") is encoded as: all of it ("description")
    or its first sentence, the full class name ("name")."""
    if style == "description":
        return entry
    if style == "name":
        return entry.split(". ", 1)[0].strip().rstrip(".")
    raise ValueError(f"prompt_style must be one of {PROMPT_STYLES}, got {style!r}")


def prompt_style_for(config, style: Optional[str] = None) -> str:
    """`style` if given, else the checkpoint's `zero_shot_prompt_style` ("description" when unset); validated."""
    style = style or getattr(config, "zero_shot_prompt_style", None) or "description"
    if style not in PROMPT_STYLES:
        raise ValueError(f"prompt_style must be one of {PROMPT_STYLES}, got {style!r}")
    return style


class PromptSet:
    """Class code -> clinical description, from a prompt-set dict {"prompts", "aliases", "dataset_aliases",
    "members"} (or a plain {code: text} mapping). See the module docstring for the lookup order."""

    def __init__(self, data: Optional[dict] = None, source: Optional[str] = None):
        data = data or {}
        where = source or "prompt set"
        if "prompts" not in data and data and all(isinstance(v, str) for v in data.values()):
            data = {"prompts": data}
        unknown = sorted(str(k) for k in data if k not in PROMPT_SET_FIELDS)
        if unknown:  # a misspelt field was ignored, and its table with it: labels then read as other classes
            hints = [f"{k!r} (did you mean {close[0]!r}?)" if (close := difflib.get_close_matches(
                k, PROMPT_SET_FIELDS, n=1)) else repr(k) for k in unknown]
            raise ValueError(f"{where}: unknown field(s) {', '.join(hints)}; a prompt set holds "
                             f"{', '.join(PROMPT_SET_FIELDS)}, or is a plain {{code: text}} mapping whose every "
                             "value is a text")
        prompts = data.get("prompts", {})
        if not isinstance(prompts, dict) or not all(isinstance(k, str) and isinstance(v, str) and v.strip()
                                                    for k, v in prompts.items()):
            raise ValueError(f"{where}: 'prompts' must map class codes to non-empty texts")
        for field in ("aliases", "dataset_aliases", "members"):
            if not isinstance(data.get(field, {}), dict):
                raise ValueError(f"{where}: '{field}' must be an object")
        self.prompts: Dict[str, str] = dict(prompts)
        self.aliases: Dict[str, str] = {str(k): str(v) for k, v in data.get("aliases", {}).items()}
        self.source = source
        self._by_fold = {k.casefold(): k for k in self.prompts}
        # a dataset's table keyed by any of its names ("chapman" is csn's); every alias must lead to a code of the
        # set (a mistyped target fell through to the global aliases, another class)
        self.dataset_aliases: Dict[str, Dict[str, str]] = {}
        for name, table in data.get("dataset_aliases", {}).items():
            if not isinstance(table, dict):
                raise ValueError(f"{where}: dataset_aliases[{name!r}] must be an object")
            key = _label_set_key(name)
            self.dataset_aliases.setdefault(DATASET_ALIAS_GROUPS.get(key, key), {}).update(table)
        tables = [("aliases", self.aliases)] + [(f"dataset_aliases[{k!r}]", t) for k, t in self.dataset_aliases.items()]
        for field, table in tables:
            lost = [f"{k!r} -> {v!r}" for k, v in table.items() if str(v).casefold() not in self._by_fold]
            if lost:
                raise ValueError(f"{where}: {field} lead(s) to no code of the set's prompts: {', '.join(lost[:5])}")
        self.members: Dict[str, Dict[str, List[str]]] = {}
        for label_set, table in data.get("members", {}).items():
            name = _label_set_key(label_set)
            if not isinstance(table, dict) or not all(
                    isinstance(v, list) and all(isinstance(m, str) for m in v) for v in table.values()):
                raise ValueError(f"{where}: members[{label_set!r}] must map class codes to lists of codes")
            for code, found in table.items():
                unknown = [m for m in [code, *found] if m.casefold() not in self._by_fold]
                if unknown:
                    raise ValueError(f"{where}: members[{label_set!r}][{code!r}] names code(s) without a prompt: "
                                     f"{', '.join(unknown)}")
            self.members[name] = {self._by_fold[k.casefold()]: [self._by_fold[m.casefold()] for m in v]
                                  for k, v in table.items()}

    def __len__(self) -> int:
        return len(self.prompts)

    def __contains__(self, code: str) -> bool:
        return self.key_for(code) is not None

    def dataset_table(self, dataset: Optional[str]) -> Optional[Dict[str, str]]:
        """The alias table of `dataset` ({} when the set has none for a known dataset); None for no dataset."""
        if dataset is None:
            return None
        name = _label_set_key(dataset)
        group = DATASET_ALIAS_GROUPS.get(name, name)
        if group in self.dataset_aliases:
            return self.dataset_aliases[group]
        if name in DATASET_ALIAS_GROUPS:
            if self.prompts:  # a dataset's own spellings can mean another class here (CSN's "AF" is flutter)
                warnings.warn(f"the prompt set ({self.source or 'prompts'}) has no dataset_aliases table for "
                              f"{group!r}: labels of dataset={dataset!r} are matched to its codes as written, not "
                              "as that dataset spells them (prompts_dbeta.json has one for each known dataset)",
                              UserWarning, stacklevel=2)
            return {}
        known = sorted(set(DATASET_ALIAS_GROUPS) | set(self.dataset_aliases))
        raise ValueError(f"unknown dataset {dataset!r} for the prompt set; expected one of {', '.join(known)}")

    def _alias_target(self, table: Dict[str, str], name: str) -> Optional[str]:
        if name in table:
            target = table[name]
        else:
            folded = name.casefold()
            target = next((v for k, v in table.items() if k.casefold() == folded), None)
        return None if target is None else self._by_fold.get(str(target).casefold())

    def key_for(self, label: str, dataset: Optional[str] = None) -> Optional[str]:
        """The prompt key of `label` (see the module docstring), or None for free text or an unknown code."""
        name = str(label).strip()
        table = self.dataset_table(dataset)
        if table:
            key = self._alias_target(table, name)
            if key is not None:
                return key
        if name in self.prompts:
            return name
        if not looks_like_code(name):
            return None
        if name.casefold() in self._by_fold:
            return self._by_fold[name.casefold()]
        code_aliases = {k: v for k, v in self.aliases.items() if not any(ch.isspace() for ch in k)}
        return self._alias_target(code_aliases, name)

    def close_codes(self, label: str, n: int = 5) -> List[str]:
        """Known codes spelled like `label` (difflib, case-insensitive), for the unknown-code warning."""
        folded = str(label).casefold()
        found = difflib.get_close_matches(folded, list(self._by_fold), n=n, cutoff=0.5)
        out = [self._by_fold[f] for f in found]
        for key in self.prompts:  # codes containing the label or contained in it ("AFIBX" -> AFIB)
            if len(out) >= n:
                break
            k = key.casefold()
            if key not in out and len(folded) >= 2 and (folded in k or (len(k) >= 2 and k in folded)):
                out.append(key)
        return out[:n]

    def resolve(self, label: str, dataset: Optional[str] = None, warn: bool = True,
                style: str = "description") -> Tuple[str, Optional[str]]:
        """(text for the text encoder, prompt key or None); `style` picks the whole entry or the class name."""
        key = self.key_for(label, dataset)
        if key is not None:
            return prompt_text(self.prompts[key], style), key
        prompt_text("", style)  # the style is validated for free text too
        name = str(label).strip()
        if warn and looks_like_code(name):
            if self.prompts:
                close = self.close_codes(name)
                hint = f"; close known codes: {', '.join(close)}" if close else ""
                message = (f"candidate label {name!r} looks like a class code but is not in the prompt set "
                           f"({self.source or 'prompts'}, {len(self.prompts)} codes); using it as free text{hint}")
            else:
                message = (f"no prompt set ({PROMPTS_FILENAME}) was found for this model, so the code {name!r} is "
                           "used as free text; pass prompts=... or describe the class in words")
            warnings.warn(message, UserWarning, stacklevel=3)
        return name, None

    def members_of(self, key: Optional[str], dataset: Optional[str]) -> List[str]:
        """The member codes of prompt key `key` in `dataset`'s label set (not `key` itself; [] for a class with no
        finer members, or free text). Errors: no members tables at all, a dataset without one (naming those that
        have one), a class that has members only in another label set."""
        name = None if dataset is None else _label_set_key(dataset)
        if not self.members:
            raise ValueError(f"prompt members: the prompt set ({self.source or 'prompts'}) has no members tables (a "
                             f"model exported before they existed?); use a {PROMPTS_FILENAME} that has them")
        if name not in self.members:
            raise ValueError(f"prompt members need dataset= naming a label set with a members table "
                             f"({', '.join(sorted(self.members))}); got dataset={dataset!r}")
        if key is None:
            return []
        elsewhere = [other for other, table in self.members.items() if other != name and key in table]
        if key not in self.members[name] and elsewhere:  # "MI" under ptbxl_sub would silently be one prompt
            raise ValueError(f"prompt members: {key!r} is a class of {', '.join(elsewhere)}, not of {name}; "
                             f"pass dataset={elsewhere[0]!r}")
        return [m for m in self.members[name].get(key, []) if m != key]

    def label_texts(self, label: str, dataset: Optional[str] = None, style: str = "description",
                    members: bool = False, warn: bool = True) -> Tuple[Tuple[str, ...], Optional[str], List[str]]:
        """(every text `label` is encoded as, its prompt key or None, its member keys): its own texts and, with
        `members=True`, each member's, without repeats."""
        text, key = self.resolve(label, dataset, warn=warn, style=style)
        found = self.members_of(key, dataset) if members else []
        texts = [text] + [prompt_text(self.prompts[m], style) for m in found]
        return tuple(dict.fromkeys(texts)), key, found

    def texts(self, labels: Sequence[str], dataset: Optional[str] = None, style: str = "description",
              template: str = "{}", warn: bool = True, members: bool = False) -> List[Tuple[str, ...]]:
        """Each label's texts (one, unless `members` adds more), each in `template` (which must contain "{}").
        Score them with `label_features`."""
        check_template(template)
        return [tuple(template.format(t) for t in self.label_texts(label, dataset, style, members, warn)[0])
                for label in labels]


def _read_prompt_file(path: Union[str, os.PathLike], source: Optional[str] = None) -> PromptSet:
    source = source or str(path)
    try:
        with open(path, encoding="utf-8") as handle:
            data = json.load(handle)
    except FileNotFoundError as err:
        raise FileNotFoundError(f"{source}: prompt-set file not found") from err
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise ValueError(f"{source}: not a valid prompt-set JSON file ({err})") from err
    if not isinstance(data, dict):
        raise ValueError(f"{source}: a prompt set is a JSON object, got {type(data).__name__}")
    return PromptSet(data, source=source)


def check_template(template) -> None:
    """A hypothesis template holds the label once, as "{}", and no other field ("{} ({})" would fail with a bare
    IndexError at format time, "ECG {ms}: {}" with a KeyError); literal braces are written "{{" and "}}"."""
    import string

    try:
        fields = [field for _, field, _, _ in string.Formatter().parse(template) if field is not None]
    except (TypeError, ValueError, AttributeError) as err:
        raise ValueError(f"hypothesis_template must be a format string with one '{{}}' for the label, got "
                         f"{template!r} ({err})") from None
    if fields != [""]:
        raise ValueError(f"hypothesis_template must contain '{{}}' for the label once and no other field (write a "
                         f"literal brace as '{{{{' or '}}}}'), got {template!r}")


def load_prompt_set(name_or_path: Optional[str] = None, revision: Optional[str] = None,
                    prompts: Union[None, str, os.PathLike, dict, PromptSet] = None) -> PromptSet:
    """The prompt set of a model: `prompts` if given (a PromptSet, a dict or a JSON path); else
    `prompts_dbeta.json` in the model folder `name_or_path`; else, for a Hub repo id, that file downloaded with
    huggingface_hub (cache/offline rules apply); else the copy beside this module; else an empty set.
    A file that exists but is not a valid prompt set is an error naming it."""
    if isinstance(prompts, PromptSet):
        return prompts
    if isinstance(prompts, dict):
        return PromptSet(prompts, source="prompts argument")
    if prompts is not None:
        if not isinstance(prompts, (str, os.PathLike)):
            raise TypeError(f"prompts must be a PromptSet, a dict or the path of a JSON file, got "
                            f"{type(prompts).__name__}")
        return _read_prompt_file(prompts)
    if name_or_path:
        local = Path(str(name_or_path))
        if local.is_dir():
            if (local / PROMPTS_FILENAME).is_file():
                return _read_prompt_file(local / PROMPTS_FILENAME)
        else:
            path = None
            try:
                from huggingface_hub import hf_hub_download

                path = hf_hub_download(str(name_or_path), PROMPTS_FILENAME, revision=revision)
            except ImportError:
                pass
            except Exception:  # not on the Hub, offline and uncached, no such file: fall through
                pass
            if path is not None:
                return _read_prompt_file(path, source=f"{name_or_path}/{PROMPTS_FILENAME}")
    beside = Path(__file__).resolve().parent / PROMPTS_FILENAME
    if beside.is_file():
        return _read_prompt_file(beside)
    return PromptSet({}, source=None)


# --------------------------------------------------------------------------------------------------------------
# Scoring
# --------------------------------------------------------------------------------------------------------------


def zero_shot_logits(model, ecg_embeds: torch.Tensor, text_embeds: torch.Tensor,
                     scoring: str = "model") -> torch.Tensor:
    """[n_ecg, n_labels] logits. "model" (the default everywhere): `model.similarity`, the logits the model was
    trained with; "cosine": cosine similarity; "dot": the raw dot product."""
    if scoring not in SCORINGS:
        raise ValueError(f"scoring must be one of {', '.join(SCORINGS)}, got {scoring!r}")
    text_embeds = text_embeds.to(device=ecg_embeds.device, dtype=ecg_embeds.dtype)
    if scoring == "model":
        return model.similarity(ecg_embeds, text_embeds)
    if scoring == "cosine":
        ecg_embeds = torch.nn.functional.normalize(ecg_embeds, dim=-1)
        text_embeds = torch.nn.functional.normalize(text_embeds, dim=-1)
    return ecg_embeds @ text_embeds.t()


def label_features(encode: Callable[[List[str]], torch.Tensor],
                   label_texts: Sequence[Sequence[str]]) -> torch.Tensor:
    """[n_labels, hidden]: each label's text feature, the mean of the features of its texts (`PromptSet.texts`).
    `encode` maps a list of strings to their features [n, hidden]; each distinct text is encoded once."""
    unique = list(dict.fromkeys(t for texts in label_texts for t in texts))
    if any(len(texts) == 0 for texts in label_texts):
        raise ValueError("every label needs at least one text")
    features = torch.as_tensor(encode(unique))
    row = {t: i for i, t in enumerate(unique)}
    return torch.stack([features[[row[t] for t in texts]].mean(dim=0) for texts in label_texts])


def label_scores(logits: torch.Tensor, multi_label: bool = False) -> torch.Tensor:
    """Scores from logits [..., n_labels]: softmax over the labels, or an independent sigmoid per label with
    `multi_label=True` and for a single label."""
    logits = logits.float()
    if multi_label or logits.shape[-1] == 1:
        return torch.sigmoid(logits)
    return logits.softmax(dim=-1)
