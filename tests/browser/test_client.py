"""
The web client in Chromium against a real daphne and Redis: shared server
subscriptions, and resume across a server that is killed and restarted.

The page is the static testbed (vanilla_site/static/demo/testbed.html); the
test publishes to the ``weather`` topic of JFK itself, which needs no
running source.
"""
import json
import threading
import time
from urllib.parse import urlencode

import pytest

from pubsub.publishing import publish
from pubsub.subscriptions import snapshot
from pubsub.topics import Topic

from .conftest import start_daphne

pytestmark = [pytest.mark.browser, pytest.mark.integration]

JFK = {"airport": "JFK"}
WEATHER_JFK = Topic.of("weather", JFK)


def url_of_testbed(server, source, params, **query):
    query = urlencode({"source": source, "params": json.dumps(params), **query})
    return f"{server.url}/static/demo/testbed.html?{query}"


def wait_until(predicate, timeout=15, message="condition"):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.05)
    raise AssertionError(f"{message} not met within {timeout} s")


def subscriber_count(topic):
    return snapshot()["counts"].get(topic.key, 0)


def record_frames(page):
    """Every frame the page sends over its websockets, decoded, in order."""
    sent = []

    def on_websocket(websocket):
        websocket.on("framesent", lambda payload: sent.append(json.loads(payload)))

    page.on("websocket", on_websocket)
    return sent


def state_changes(page):
    return [entry["state"] for entry in page.evaluate("window.states")]


class Publisher(threading.Thread):
    """Publishes to a topic every ``interval`` seconds until stopped."""

    def __init__(self, topic, interval):
        super().__init__(daemon=True)
        self.topic = topic
        self.interval = interval
        self.published = []  # (seq, wall-clock time)
        self.halt = threading.Event()
        self.error = None

    def run(self):
        try:
            n = 0
            while not self.halt.is_set():
                seq = publish(self.topic, {"n": n, "temp_c": 20 + n % 5})
                self.published.append((seq, time.time()))
                n += 1
                self.halt.wait(self.interval)
        except Exception as exc:  # reported by stop()
            self.error = exc

    def stop(self):
        self.halt.set()
        self.join(timeout=10)
        assert self.error is None, f"publishing failed: {self.error!r}"
        return [seq for seq, _ in self.published]


def test_two_widgets_share_one_server_subscription(processes, page):
    """Two handles on one topic make one server subscription; both receive."""
    server = processes.daphne()
    sent = record_frames(page)

    # Phase: two widgets subscribe the same source and params.
    page.goto(url_of_testbed(server, "weather", JFK, widgets=2))
    wait_until(lambda: subscriber_count(WEATHER_JFK) == 1, message="one subscriber")
    page.wait_for_function("window.handles.every(h => h.state !== null)")

    # Phase: every publication reaches both widgets.
    seqs = [publish(WEATHER_JFK, {"n": n}) for n in range(3)]
    page.wait_for_function(f"window.seen.every(s => s.includes({seqs[-1]}))")
    first, second = page.evaluate("window.seen")
    assert first == second
    assert first[-3:] == seqs
    assert [frame["op"] for frame in sent if frame["op"] != "ping"] == ["subscribe"]
    assert subscriber_count(WEATHER_JFK) == 1

    # Phase: one widget leaves; the server subscription stays.
    page.evaluate("window.handles[0].unsubscribe()")
    last = publish(WEATHER_JFK, {"n": 3})
    page.wait_for_function(f"window.seen[1].includes({last})")
    assert last not in page.evaluate("window.seen[0]")
    assert not [frame for frame in sent if frame["op"] == "unsubscribe"]
    assert subscriber_count(WEATHER_JFK) == 1

    # Phase: the last widget leaves; the client unsubscribes.
    page.evaluate("window.handles[1].unsubscribe()")
    wait_until(lambda: subscriber_count(WEATHER_JFK) == 0, message="no subscriber")
    unsubscribes = [frame for frame in sent if frame["op"] == "unsubscribe"]
    assert unsubscribes == [{"op": "unsubscribe", "id": sent[0]["id"]}]


def test_page_resumes_every_publication_across_a_server_restart(
    processes, page, fixed_port
):
    """daphne is killed and restarted under a live page: no seq lost or repeated."""
    server = start_daphne(processes, fixed_port)
    page.goto(url_of_testbed(server, "weather", JFK))
    wait_until(lambda: subscriber_count(WEATHER_JFK) == 1, message="subscribed")
    publisher = Publisher(WEATHER_JFK, interval=0.02)
    publisher.start()
    try:
        # Phase: publications flow live.
        page.wait_for_function("window.seen[0].length >= 25")

        # Phase: the server dies while publishing goes on.
        killed_at = time.time()
        server.kill()
        page.wait_for_function(
            "window.states.some(s => s.state === 'reconnecting')", timeout=20_000
        )
        time.sleep(1.5)

        # Phase: the server comes back on the same port; the page resumes.
        start_daphne(processes, fixed_port, name="daphne-restarted")
        back_at = time.time()
        page.wait_for_function("window.resumes.length > 0", timeout=45_000)
        time.sleep(1.0)
    finally:
        published = publisher.stop()

    # Phase: the page ends with every seq exactly once, in order.
    page.wait_for_function(
        f"window.seen[0].at(-1) === {published[-1]}", timeout=15_000
    )
    seen = page.evaluate("window.seen[0]")
    assert seen == list(range(seen[0], published[-1] + 1))
    assert set(published) >= set(seen)
    # Retries while the server is down stay "reconnecting".
    assert state_changes(page) == ["connecting", "open", "reconnecting", "open"]

    # Phase: what the resume did, measured.
    [resume] = page.evaluate("window.resumes")
    assert resume["resumed"] is True
    reopened_at = page.evaluate("window.states")[-1]["at"] / 1000
    recovered = [
        seq
        for seq, at in publisher.published
        if seq > resume["since"] and at <= resume["at"] / 1000
    ]
    print(
        f"\nserver down {back_at - killed_at:.2f} s; page reopened "
        f"{reopened_at - back_at:.2f} s after the restart "
        f"({reopened_at - killed_at:.2f} s after the kill); resumed since seq "
        f"{resume['since']}: {len(recovered)} publications recovered by resume, "
        f"{len(seen)} delivered in all, {len(published)} published"
    )
    assert recovered, "publications went on while the server was down"
