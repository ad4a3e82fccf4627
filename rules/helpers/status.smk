# Helpers of rules/status.smk: what each pair goes through, for the cohort status table.


STATUS_TABLE = "results/status/cohort_status.tsv"


def rule_plan(name, role="all"):
    """A rule's output and log templates, for mschange.status."""
    proxy = getattr(rules, name)
    return {
        "rule": name,
        "outputs": [str(path) for path in proxy.output],
        "log": str(proxy.log[0]),
        "role": role,
    }


def status_plan():
    """What each pair goes through, stage by stage (mschange.status reads it)."""
    plan = []
    if PER_SUBJECT_CHECKS:
        plan.append({"stage": "inputs checked", "rules": [rule_plan("check_inputs")]})
    plan.append(
        {
            "stage": "preprocessed",
            "rules": [rule_plan("simulate_rescan", "single")]
            + [rule_plan(name) for name in STEP_RULES],
        }
    )
    plan.append({"stage": "quality control", "rules": [rule_plan("qc_pair")]})
    if synthesis_targets():
        synthesis = []
        if SAMPLES:
            synthesis.append(rule_plan("supermix_subject", "nochange"))
        if LESION_SAMPLES:
            synthesis.append(rule_plan("paint_lesions_subject", "nochange"))
        if VALIDATION_SUBJECTS and VALIDATION_SAMPLES:
            synthesis.append(rule_plan("paint_validation_subject", "validation"))
        plan.append({"stage": "synthesised", "rules": synthesis})
    if detector_targets():
        plan.append(
            {"stage": "predicted", "rules": [rule_plan("predict_pair", "test")]}
        )
    if evaluation_targets():
        evaluation = [rule_plan("evaluate_pair", "evaluated")]
        if BASELINE_NAME in METHODS:
            evaluation.insert(0, rule_plan("subtraction_baseline", "evaluated"))
        plan.append({"stage": "evaluated", "rules": evaluation})
    return plan


def status_pairs():
    """Each pair's subject, split, change and roles (which stages apply to it)."""
    role_members = {
        "single": set(SINGLE_SUBJECTS),
        "nochange": set(NOCHANGE_SUBJECTS),
        "validation": set(VALIDATION_SUBJECTS),
        "test": set(TEST_SUBJECTS),
        "evaluated": set(EVALUATED_SUBJECTS),
    }
    pairs = []
    for row in COHORT.itertuples(index=False):
        roles = [
            role for role, members in role_members.items() if row.subject in members
        ]
        pairs.append(
            {
                "subject": row.subject,
                "split": row.split,
                "change": row.change,
                "roles": roles,
            }
        )
    return pairs


def status_request():
    """Everything mschange.status needs, as plain data (also a rule param)."""
    return {
        "plan": status_plan(),
        "pairs": status_pairs(),
        "wildcards": {
            "tp": TIMEPOINTS,
            "model": list(MODELS),
            "method": METHODS,
            "minblob": [str(size) for size in BLOB_SIZES],
        },
    }


def write_cohort_status_table():
    """Write the status table and print which pairs failed, with their logs."""
    import sys

    from mschange.status import status_from_request, status_summary, write_cohort_status

    try:
        table = status_from_request(status_request())
        write_cohort_status(table, STATUS_TABLE)
    except Exception as error:  # never hide the run's own outcome behind this one
        print(f"mschange: could not write {STATUS_TABLE}: {error}", file=sys.stderr)
        return
    print(status_summary(table, STATUS_TABLE), file=sys.stderr)
