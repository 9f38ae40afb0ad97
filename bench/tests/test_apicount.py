from bench import apicount

METRICS = """\
# HELP apiserver_flowcontrol_dispatched_requests_total [BETA] Number of requests executed
# TYPE apiserver_flowcontrol_dispatched_requests_total counter
apiserver_flowcontrol_dispatched_requests_total{flow_schema="exempt",priority_level="exempt"} 515
apiserver_flowcontrol_dispatched_requests_total{flow_schema="fgo-bench-su.configmaps",priority_level="workload-low"} 12
apiserver_flowcontrol_dispatched_requests_total{flow_schema="fgo-bench-su.read",priority_level="workload-low"} 7
apiserver_flowcontrol_dispatched_requests_total{flow_schema="fgo-bench-su.events",priority_level="workload-low"} 1
apiserver_flowcontrol_dispatched_requests_total{flow_schema="kube-scheduler",priority_level="workload-high"} 25
apiserver_flowcontrol_dispatched_requests_total_other{flow_schema="exempt"} 99
"""


def test_parse_dispatched_reads_only_that_counter() -> None:
    got = apicount.parse_dispatched(METRICS)
    assert got == {
        "exempt": 515.0,
        "fgo-bench-su.configmaps": 12.0,
        "fgo-bench-su.read": 7.0,
        "fgo-bench-su.events": 1.0,
        "kube-scheduler": 25.0,
    }


def test_by_identity_splits_writes_reads_and_builtins() -> None:
    before = {"fgo-bench-su.configmaps": 2.0, "fgo-bench-su.read": 7.0, "kube-scheduler": 5.0}
    after = apicount.parse_dispatched(METRICS)
    per = apicount.by_identity(before, after)
    assert per["su"] == {"writes": 11.0, "reads": 0.0, "configmaps": 10.0, "events": 1.0}
    assert per["builtin:kube-scheduler"] == {"requests": 20.0}
    assert per["builtin:exempt"] == {"requests": 515.0}


def test_flow_schemas_match_each_service_account_before_the_builtin_catch_all() -> None:
    schemas = apicount.flow_schemas("gpu-operator", ["b", "a", "a"])
    names = [s["metadata"]["name"] for s in schemas]
    buckets = [*apicount.WRITE_BUCKETS, "write-other", "read"]
    assert names == [apicount.schema_name(sa, b) for sa in ("a", "b") for b in buckets]
    precedences = [s["spec"]["matchingPrecedence"] for s in schemas]
    assert len(set(precedences)) == len(precedences)
    # Built-in: kube-system-service-accounts 900 < ours < service-accounts 9000.
    assert all(900 < p < 9000 for p in precedences)
    for schema in schemas:
        (rule,) = schema["spec"]["rules"]
        assert rule["subjects"][0]["serviceAccount"]["namespace"] == "gpu-operator"
    # Per identity, each specific write bucket comes before the catch-alls.
    a = {s["metadata"]["name"]: s["spec"]["matchingPrecedence"] for s in schemas[: len(buckets)]}
    assert (
        max(a[apicount.schema_name("a", b)] for b in apicount.WRITE_BUCKETS)
        < a[apicount.schema_name("a", "write-other")]
        < a[apicount.schema_name("a", "read")]
    )


def test_reads_schema_has_no_write_verbs_of_its_own_and_writes_have_no_reads() -> None:
    schemas = {s["metadata"]["name"]: s for s in apicount.flow_schemas("ns", ["x"])}
    write = schemas[apicount.schema_name("x", "configmaps")]["spec"]["rules"][0]
    assert set(write["resourceRules"][0]["verbs"]) == set(apicount.WRITE_VERBS)
    assert "get" not in write["resourceRules"][0]["verbs"]


def test_bringup_requests_per_node_cover_every_service_account() -> None:
    from bench.scenarios.bringup import api_per_node

    before = {"fgo-bench-su.configmaps": 2.0, "fgo-bench-su.read": 7.0}
    after = {"fgo-bench-su.configmaps": 12.0, "fgo-bench-su.nodes": 10.0, "fgo-bench-su.read": 9.0}
    per = api_per_node(before, after, 10, {"su", "idle"})
    assert per["su"] == {"writes": 2.0, "reads": 0.2, "configmaps": 1.0, "nodes": 1.0}
    assert per["idle"] == {"writes": 0.0, "reads": 0.0}  # a service that sent nothing is listed
