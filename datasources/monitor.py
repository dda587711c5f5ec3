"""
The admin's live view of the cluster: which sources run for which params,
who watches them, on which server processes, since when.
"""
import datetime
import json
import time

from django.http import JsonResponse
from django.template.response import TemplateResponse

from pubsub.connection import Keys, sync_client
from pubsub.subscriptions import snapshot


def active_sources():
    """One row per topic that is watched or still running, newest first."""
    state = snapshot()
    keys = Keys()
    client = sync_client()
    topics = sorted(
        set(state["states"]) | set(state["counts"]),
        key=lambda key: -state["started"].get(key, 0),
    )
    with client.pipeline(transaction=False) as pipe:
        for key in topics:
            pipe.get(keys.seq(key))
        pipe.hgetall(keys.last_publication)
        *seqs, last = pipe.execute()
    now = time.time()
    rows = []
    for key, seq in zip(topics, seqs):
        info = state["topics"].get(key, {})
        holders = state["holders"].get(key, {})
        processes = state["processes"]
        rows.append(
            {
                "topic": key,
                "source": info.get("source", "?"),
                "params": info.get("params", {}),
                "state": state["states"].get(key, "stopping"),
                "subscriptions": state["counts"].get(key, 0),
                "connections": sum(
                    processes.get(pid, {}).get("members", {}).get(key, 0)
                    for pid in holders
                ),
                "processes": [
                    _process_label(pid, processes.get(pid, {})) for pid in holders
                ],
                "started": _iso(state["started"].get(key)),
                "stops_at": _iso(state["idle"].get(key)),
                "seq": int(seq or 0),
                "last_publication_age": _age(last.get(key), now),
            }
        )
    return {
        "sources": rows,
        "processes": [
            {
                "id": pid,
                "label": _process_label(pid, info),
                "connections": info.get("connections", 0),
                "subscriptions": info.get("subscriptions", 0),
                "lease_left": round(info["lease_end"] / 1000 - now, 1),
                "started": _iso(info.get("started", 0) * 1000),
            }
            for pid, info in state["processes"].items()
        ],
        "time": _iso(now * 1000),
    }


def _process_label(process_id, info):
    if "host" in info:
        return f"{info['host']}:{info['pid']}"
    return process_id


def _iso(ms):
    if not ms:
        return None
    moment = datetime.datetime.fromtimestamp(ms / 1000, datetime.UTC)
    return moment.isoformat(timespec="seconds")


def _age(ms, now):
    return None if ms is None else round(now - int(ms) / 1000, 1)


def live_sources_view(request, admin_site):
    """The page; it refreshes itself from ``?format=json`` every 2 s."""
    data = active_sources()
    if request.GET.get("format") == "json":
        return JsonResponse(data)
    context = {
        **admin_site.each_context(request),
        "title": "Live sources",
        "initial": json.dumps(data),
    }
    return TemplateResponse(request, "admin/datasources/live_sources.html", context)
