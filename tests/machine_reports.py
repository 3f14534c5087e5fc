"""MIMIC-IV-ECG-style machine reports (a rhythm, optional ectopy, 0-3 statements, optional quality warning, a
summary) for the N3S tests and benchmarks/n3s_speed.py. Not used by the package itself."""

from __future__ import annotations

from typing import List

import numpy as np

from train.n3s import canonical_report

RHYTHMS = (
    'Sinus rhythm', 'Sinus bradycardia', 'Marked sinus bradycardia', 'Sinus tachycardia', 'Sinus arrhythmia',
    'Atrial fibrillation', 'Atrial fibrillation with rapid ventricular response',
    'Atrial fibrillation with controlled ventricular response', 'Atrial flutter',
    'Atrial flutter with variable A-V block', 'Ectopic atrial rhythm', 'Junctional rhythm', 'Paced rhythm',
    'Supraventricular tachycardia', 'Undetermined rhythm', 'Sinus rhythm with 1st degree A-V block',
    'AV sequential or dual chamber electronic pacemaker',
)
ECTOPY = (
    'with premature ventricular complexes', 'Ventricular premature complex', 'Atrial premature complex',
    'Multiple ventricular premature complexes', 'with occasional supraventricular premature complexes',
    'Ventricular bigeminy',
)
STATEMENTS = (
    '1st degree A-V block', 'Left anterior fascicular block', 'Left posterior fascicular block',
    'Right bundle branch block', 'Left bundle branch block', 'Incomplete right bundle branch block',
    'Incomplete left bundle branch block', 'Intraventricular conduction delay',
    'Nonspecific intraventricular conduction delay', 'RBBB with left anterior fascicular block', 'Short PR interval',
    'Prolonged QT interval', 'Borderline prolonged QT interval', 'Left axis deviation', 'Right axis deviation',
    'Leftward axis', 'Rightward axis', 'Indeterminate axis', 'Left ventricular hypertrophy',
    'Left ventricular hypertrophy with repolarization abnormality', 'Possible left ventricular hypertrophy',
    'Right ventricular hypertrophy', 'Left atrial enlargement', 'Probable left atrial enlargement',
    'Right atrial enlargement', 'Biatrial enlargement', 'Low QRS voltages in limb leads',
    'Low QRS voltages in precordial leads', 'Generalized low QRS voltages', 'Inferior infarct - age undetermined',
    'Anterior infarct - age undetermined', 'Septal infarct - age undetermined',
    'Anteroseptal infarct - age undetermined', 'Lateral infarct - age undetermined',
    'Possible inferior infarct - age undetermined', 'Possible anterior infarct - age undetermined',
    'Inferior infarct, possibly acute', 'Anterior infarct, possibly acute', 'Acute MI / STEMI',
    'Nonspecific ST-T wave changes', 'Nonspecific T wave abnormalities',
    'Lateral ST-T changes may be due to myocardial ischemia',
    'Inferior ST-T changes may be due to myocardial ischemia',
    'Anterolateral ST-T changes may be due to myocardial ischemia', 'ST elevation, consider early repolarization',
    'ST depression, consider subendocardial injury', 'Inferior/lateral ST-T changes are nonspecific',
    'T wave inversion in lateral leads', 'Poor R wave progression - probable normal variant',
    'Poor R wave progression - consider anterior infarct',
)
QUALITY = (
    'Baseline wander in lead(s) V1', 'Warning: Data quality may affect interpretation',
    'Artifact in lead(s) I,II,aVF', 'Lead(s) unsuitable for analysis: V1',
)


def synthetic_reports(n: int, seed: int = 0) -> List[str]:
    """n distinct MIMIC-IV-ECG-style machine reports (a rhythm, optional ectopy, 0-3 statements, optional quality
    warning, a summary; joined with ". ", cleaned), sorted. For tests and benchmarks."""
    rng = np.random.default_rng(seed)
    out: set = set()
    while len(out) < n:
        f = [RHYTHMS[rng.integers(len(RHYTHMS))]]
        if rng.random() < 0.2:
            f.append(ECTOPY[rng.integers(len(ECTOPY))])
        m = int(rng.choice(4, p=[0.35, 0.3, 0.2, 0.15]))
        f += [STATEMENTS[i] for i in sorted(rng.choice(len(STATEMENTS), m, replace=False))]
        if rng.random() < 0.1:
            f.append(QUALITY[rng.integers(len(QUALITY))])
        if m == 0 and f == ["Sinus rhythm"]:
            f.append("Normal ECG")
        elif m == 0:
            f.append(("Otherwise normal ECG", "Borderline ECG")[rng.integers(2)])
        else:
            f.append(("Borderline ECG", "Abnormal ECG")[rng.integers(2)])
        out.add(canonical_report(". ".join(f)))
    return sorted(out)
