#!/usr/bin/env python3
"""Writes tributary's Grafana dashboard (deploy/grafana/tributary.json) to standard output.

    python3 deploy/grafana/generate.py > deploy/grafana/tributary.json

The JSON file is what ships (the Helm chart's ConfigMap, a UI import); this script only keeps
its ~40 panels consistent: one data source variable, the job filter, units, the layout.
tests/grafana_dashboard.rs checks that the file is what this script prints, so edit here and
regenerate. Standard library only.
"""

import json
import sys

DATASOURCE = {"type": "prometheus", "uid": "${datasource}"}
# Every selector of every query carries this matcher (the `job` variable, several jobs allowed).
JOB = 'job=~"$job"'


def sel(metric, *matchers):
    """A selector of `metric` filtered to the dashboard's jobs (and `matchers`)."""
    return metric + "{" + ", ".join((JOB,) + matchers) + "}"


def rate(metric, *matchers):
    return "rate(" + sel(metric, *matchers) + "[$__rate_interval])"


def per_table_or_zero(expr):
    """`expr` (by table), or 0 for each table that committed: a counter a table never
    incremented has no series yet, and a panel of them would show nothing at all."""
    return expr + " or 0 * sum by (table) (" + rate("tributary_commits_total") + ")"


def none_or_zero(expr, label):
    """`expr`, or a single 0 (labelled `label`="none") when it has no series at all."""
    return expr + ' or on() label_replace(vector(0), "' + label + '", "none", "", "")'


def target(expr, legend, ref="A", instant=False):
    return {
        "datasource": DATASOURCE,
        "editorMode": "code",
        "expr": expr,
        "instant": instant,
        "legendFormat": legend,
        "range": not instant,
        "refId": ref,
    }


THRESHOLDS_NONE = {"mode": "absolute", "steps": [{"color": "green", "value": None}]}


def timeseries(title, description, unit, targets, stack=False, steps=False, width=12, minimum=0):
    custom = {
        "axisBorderShow": False,
        "axisCenteredZero": False,
        "axisColorMode": "text",
        "axisLabel": "",
        "axisPlacement": "auto",
        "barAlignment": 0,
        "drawStyle": "line",
        "fillOpacity": 20 if stack else 10,
        "gradientMode": "none",
        "hideFrom": {"legend": False, "tooltip": False, "viz": False},
        "insertNulls": False,
        "lineInterpolation": "stepAfter" if steps else "linear",
        "lineWidth": 1,
        "pointSize": 4,
        "scaleDistribution": {"type": "linear"},
        "showPoints": "never",
        "spanNulls": False,
        "stacking": {"group": "A", "mode": "normal" if stack else "none"},
        "thresholdsStyle": {"mode": "off"},
    }
    defaults = {"color": {"mode": "palette-classic"}, "custom": custom, "thresholds": THRESHOLDS_NONE, "unit": unit}
    if minimum is not None:
        defaults["min"] = minimum
    return {
        "type": "timeseries",
        "title": title,
        "description": description,
        "datasource": DATASOURCE,
        "fieldConfig": {"defaults": defaults, "overrides": []},
        "options": {
            "legend": {"calcs": [], "displayMode": "list", "placement": "bottom", "showLegend": True},
            "tooltip": {"hideZeros": False, "mode": "multi", "sort": "desc"},
        },
        "targets": targets,
        "_w": width,
        "_h": 8,
    }


def stat(title, description, unit, targets, text_mode="auto", thresholds=THRESHOLDS_NONE, graph=True, no_value=None):
    defaults = {"color": {"mode": "thresholds"}, "thresholds": thresholds, "unit": unit}
    if no_value is not None:
        defaults["noValue"] = no_value
    return {
        "type": "stat",
        "title": title,
        "description": description,
        "datasource": DATASOURCE,
        "fieldConfig": {"defaults": defaults, "overrides": []},
        "options": {
            "colorMode": "value",
            "graphMode": "area" if graph else "none",
            "justifyMode": "auto",
            "orientation": "auto",
            "percentChangeColorMode": "standard",
            "reduceOptions": {"calcs": ["lastNotNull"], "fields": "", "values": False},
            "showPercentChange": False,
            "textMode": text_mode,
            "wideLayout": True,
        },
        "targets": targets,
        "_w": 4,
        "_h": 4,
    }


def row(title, panels):
    return {"title": title, "panels": panels}


ROWS = [
    row("Cluster", [
        stat("Nodes", "Nodes Prometheus scrapes now (one per tributary process).", "none",
             [target("count(" + sel("tributary_build_info") + ")", "nodes", instant=True)]),
        stat("Leader", "The node that holds the leader lock: it assigns leases and exports the cluster gauges.",
             "none",
             [target("max by (instance) (" + sel("tributary_leader") + ") == 1", "{{instance}}", instant=True)],
             text_mode="name", graph=False, no_value="no leader"),
        stat("Versions", "Nodes per running version (two during a rolling update).", "none",
             [target("count by (version) (" + sel("tributary_build_info") + ")", "{{version}}", instant=True)],
             text_mode="value_and_name", graph=False),
        stat("Shards consumed", "Leases held by all nodes together: the shards being read now.", "none",
             [target("sum(" + sel("tributary_leases_owned") + ")", "shards")]),
        stat("Records read", "Kinesis records read per second, all nodes.", "count:records/s",
             [target("sum(" + rate("tributary_records_read_total") + ")", "records/s")]),
        stat("Rows committed", "Rows upserted or deleted in the warehouse per second, all tables.", "count:rows/s",
             [target("sum(" + rate("tributary_rows_committed_total") + ")", "rows/s")]),
        timeseries("Leases per node", "Shards each node consumes; the leader spreads them evenly.", "none",
                   [target("sum by (instance) (" + sel("tributary_leases_owned") + ")", "{{instance}}")],
                   stack=True, steps=True, width=6),
        timeseries("Leadership", "1 while a node is the leader; a handover shows as a step.", "none",
                   [target("max by (instance) (" + sel("tributary_leader") + ")", "{{instance}}")],
                   steps=True, width=6),
        timeseries("Cluster leases by state",
                   "Leases as the leader sees them: owned, unassigned, waiting for parent shards, finished "
                   "(SHARD_END). Only the leader exports these.", "none",
                   [target("max by (state) (" + sel("tributary_cluster_leases") + ")", "{{state}}")],
                   steps=True, width=6),
        timeseries("Cluster nodes by state",
                   "Nodes as the leader sees them: live, draining (stopping gracefully), dead (silent longer "
                   "than failover_time). Only the leader exports these.", "none",
                   [target("max by (state) (" + sel("tributary_cluster_nodes") + ")", "{{state}}")],
                   steps=True, width=6),
    ]),
    row("Throughput", [
        timeseries("Records read", "Kinesis records read per second, by node (stacked).", "count:records/s",
                   [target("sum by (instance) (" + rate("tributary_records_read_total") + ")", "{{instance}}")],
                   stack=True),
        timeseries("Bytes read", "Kinesis record data read per second, by node (stacked).", "Bps",
                   [target("sum by (instance) (" + rate("tributary_bytes_read_total") + ")", "{{instance}}")],
                   stack=True),
        timeseries("Rows committed by table and op",
                   "Rows upserted or deleted in the warehouse per second.", "count:rows/s",
                   [target("sum by (table, op) (" + rate("tributary_rows_committed_total") + ")",
                           "{{table}} {{op}}")]),
        timeseries("Rows fenced and refused by table",
                   "Fenced: rows not applied because the warehouse already held a newer or equal version "
                   "(replays after a failover or a handoff, harmless). Refused: rows the warehouse refused "
                   "one by one (a constraint the pipeline cannot know of), dead-lettered with their records.",
                   "count:rows/s",
                   [target(per_table_or_zero("sum by (table) (" + rate("tributary_rows_fenced_total") + ")"),
                           "fenced {{table}}"),
                    target(per_table_or_zero("sum by (table) (" + rate("tributary_rows_refused_total") + ")"),
                           "refused {{table}}", ref="B")]),
    ]),
    row("Lag and checkpoints", [
        timeseries("Shard lag", "How far each shard's last read was behind the tip of the stream "
                   "(MillisBehindLatest).", "s",
                   [target("max by (job, shard) (" + sel("tributary_shard_lag_seconds") + ")",
                           "{{shard}} ({{job}})")], width=18),
        {**stat("Max shard lag",
                "The worst shard's lag. TributaryShardLagging fires after ten minutes above a minute.", "s",
                [target("max(" + sel("tributary_shard_lag_seconds") + ")", "max lag")],
                thresholds={"mode": "absolute", "steps": [
                    {"color": "green", "value": None},
                    {"color": "orange", "value": 10},
                    {"color": "red", "value": 60},
                ]}), "_w": 6, "_h": 8},
        timeseries("Time since checkpoint",
                   "Seconds since each shard was last checkpointed (or its consumer started). Grows while "
                   "a shard's rows wait to commit.", "s",
                   [target("time() - max by (job, shard) (" + sel("tributary_shard_last_checkpoint_timestamp_seconds")
                           + ")", "{{shard}} ({{job}})")], width=8),
        timeseries("Time since records",
                   "Seconds since a read of each shard last returned records: a quiet partition key range, "
                   "or a stalled reader when lag grows too.", "s",
                   [target("time() - max by (job, shard) (" + sel("tributary_shard_last_read_timestamp_seconds")
                           + ")", "{{shard}} ({{job}})")], width=8),
        timeseries("Checkpoints", "Checkpoints written to the lease table per second, by node.",
                   "count:checkpoints/s",
                   [target("sum by (instance) (" + rate("tributary_checkpoints_total") + ")", "{{instance}}")],
                   width=8),
    ]),
    row("Warehouse commits", [
        timeseries("Commit latency", "Time to commit one batch (retries included): p50, p95, p99 per table.", "s",
                   [target("histogram_quantile(" + q + ", sum by (table, le) ("
                           + rate("tributary_commit_duration_seconds_bucket") + "))", "{{table}} p" + p, ref)
                    for q, p, ref in (("0.5", "50", "A"), ("0.95", "95", "B"), ("0.99", "99", "C"))]),
        timeseries("Commits", "Warehouse transactions committed per second, by table.", "count:commits/s",
                   [target("sum by (table) (" + rate("tributary_commits_total") + ")", "{{table}}")]),
        timeseries("Batch size", "Rows per committed batch: mean and p95 per table. A batch commits at "
                   "batch_rows, batch_bytes or batch_latency, whichever comes first.", "count:rows",
                   [target("sum by (table) (" + rate("tributary_commit_batch_rows_sum") + ") / sum by (table) ("
                           + rate("tributary_commit_batch_rows_count") + ")", "{{table}} mean", "A"),
                    target("histogram_quantile(0.95, sum by (table, le) ("
                           + rate("tributary_commit_batch_rows_bucket") + "))", "{{table}} p95", "B")]),
        timeseries("Rows in flight", "Rows handed to each table's sink and not committed yet. High and flat: "
                   "the warehouse is the bottleneck and reads are held back (backpressure).", "count:rows",
                   [target("sum by (table) (" + sel("tributary_rows_in_flight") + ")", "{{table}}")]),
    ]),
    row("Errors", [
        timeseries("Call errors by service and kind",
                   "Failed calls to Kinesis, DynamoDB, DynamoDB Streams and the warehouse, by error kind. "
                   "Lost conditional writes (condition_failed) are the normal outcome of lease contention "
                   "and are left out (next panel).", "count:errors/s",
                   [target(none_or_zero("sum by (service, kind) (" + rate("tributary_call_errors_total",
                                                                          'kind!="condition_failed"') + ")",
                                        "service"), "{{service}} {{kind}}")]),
        timeseries("Lease write conflicts",
                   "Conditional writes that lost a race (condition_failed): expected while nodes join, leave "
                   "or hand leases over; a steady rate means nodes fight over leases.", "count:conflicts/s",
                   [target(none_or_zero("sum by (service) (" + rate("tributary_call_errors_total",
                                                                    'kind="condition_failed"') + ")",
                                        "service"), "{{service}}")]),
        timeseries("Commit retries", "Warehouse commits that failed and were retried (outage, throttling, "
                   "lost replies); rows wait meanwhile.", "count:retries/s",
                   [target(per_table_or_zero("sum by (table) (" + rate("tributary_commit_retries_total") + ")"),
                           "{{table}}")]),
        timeseries("Consumer failures", "Shard consumers that failed and were restarted from their checkpoint "
                   "(a batch the warehouse rejected, a lease-table error). TributaryConsumerFailing fires at three "
                   "in 15 minutes for one shard.", "count:failures/s",
                   [target("sum by (shard) (" + rate("tributary_consumer_failures_total") + ")", "{{shard}}")]),
        timeseries("Dead-letter rows", "Rows written to the dead-letter table: records that could not be "
                   "decoded, typed or joined. Their reason and payload are in tributary_dead_letters.",
                   "count:rows/s",
                   [target("sum by (instance) (" + rate("tributary_dead_letter_rows_total") + ")", "{{instance}}")]),
    ]),
    row("Reference tables", [
        timeseries("Reference items", "Items each reference table's cache holds (the largest on any node).",
                   "short", [target("max by (reference) (" + sel("tributary_reference_items") + ")", "{{reference}}")],
                   width=6),
        timeseries("Reference memory", "Approximate bytes one node's cache of each reference table holds.",
                   "bytes", [target("max by (reference) (" + sel("tributary_reference_bytes") + ")", "{{reference}}")],
                   width=6),
        timeseries("Reference age", "Seconds since each reference table last refreshed successfully, on the "
                   "node furthest behind, and where it counts as stale: TributaryReferenceStale fires after five "
                   "minutes above twice the table's refresh_interval plus five minutes.", "s",
                   [target("max by (reference) (" + sel("tributary_reference_age_seconds") + ")", "{{reference}}"),
                    target("max by (reference) (2 * " + sel("tributary_reference_refresh_interval_seconds") + " + 300)",
                           "{{reference}} stale above", ref="B")],
                   width=6),
        timeseries("Reference refresh failures", "Refreshes that failed (the last snapshot stays in service), "
                   "all nodes.", "count:failures/s",
                   [target("sum by (reference) (" + rate("tributary_reference_refresh_failures_total") + ")",
                           "{{reference}}")], width=6),
    ]),
    row("Process", [
        timeseries("Memory", "Resident memory of each node's process.", "bytes",
                   [target("sum by (instance) (" + sel("process_resident_memory_bytes") + ")", "{{instance}}")],
                   width=6),
        timeseries("CPU", "CPU time each node's process uses (100% = one core).", "percentunit",
                   [target("sum by (instance) (" + rate("process_cpu_seconds_total") + ")", "{{instance}}")],
                   width=6),
        timeseries("Open file descriptors", "Sockets and files each node's process holds open.", "short",
                   [target("sum by (instance) (" + sel("process_open_fds") + ")", "{{instance}}")], width=6),
        timeseries("Uptime", "Seconds since each node's process started; a drop is a restart.", "s",
                   [target("time() - max by (instance) (" + sel("process_start_time_seconds") + ")",
                           "{{instance}}")], width=6),
    ]),
]


def layout(rows):
    """Rows one under another; each row's panels fill 24 columns left to right, then wrap."""
    panels, next_id, y = [], 1, 0
    for r in rows:
        panels.append({"type": "row", "title": r["title"], "id": next_id, "collapsed": False,
                       "gridPos": {"h": 1, "w": 24, "x": 0, "y": y}, "panels": []})
        next_id += 1
        y += 1
        x, line_h = 0, 0
        for p in r["panels"]:
            w, h = p.pop("_w"), p.pop("_h")
            if x + w > 24:
                x, y, line_h = 0, y + line_h, 0
            panels.append({"id": next_id, "gridPos": {"h": h, "w": w, "x": x, "y": y}, **p})
            next_id += 1
            x += w
            line_h = max(line_h, h)
        y += line_h
    return panels


def dashboard():
    return {
        "uid": "tributary",
        "title": "tributary",
        "description": "Kinesis-to-warehouse consumer cluster: leases, throughput, lag, commits, errors, "
                       "reference tables, processes.",
        "tags": ["tributary", "kinesis", "etl"],
        "schemaVersion": 41,
        "editable": True,
        "graphTooltip": 1,
        "fiscalYearStartMonth": 0,
        "liveNow": False,
        "links": [],
        "refresh": "30s",
        "time": {"from": "now-1h", "to": "now"},
        "timepicker": {},
        "timezone": "browser",
        "weekStart": "",
        "annotations": {"list": []},
        "templating": {"list": [
            {
                "name": "datasource",
                "label": "Data source",
                "type": "datasource",
                "query": "prometheus",
                "regex": "",
                "hide": 0,
                "includeAll": False,
                "multi": False,
                "refresh": 1,
                "options": [],
            },
            {
                "name": "job",
                "label": "Job",
                "description": "Prometheus jobs that scrape tributary nodes (one per cluster, usually).",
                "type": "query",
                "datasource": DATASOURCE,
                "query": "label_values(tributary_build_info, job)",
                "regex": "",
                "hide": 0,
                "includeAll": True,
                "multi": True,
                "current": {"text": ["All"], "value": ["$__all"]},
                "refresh": 2,
                "sort": 1,
                "options": [],
            },
        ]},
        "panels": layout(ROWS),
    }


if __name__ == "__main__":
    json.dump(dashboard(), sys.stdout, indent=2, ensure_ascii=False)
    sys.stdout.write("\n")
