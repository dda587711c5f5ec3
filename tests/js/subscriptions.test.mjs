/**
 * The client's subscriptions: shared server subscriptions with local ref
 * counts, resume with `since` after a reconnect, no duplicate publications.
 */
import assert from "node:assert/strict";
import { test } from "node:test";

import { canonicalJSON } from "../../pubsub/static/pubsub/js/vanilla.js";
import {
  confirm,
  connectOpen,
  data,
  FakeWebSocket,
  makeClient,
  settle,
} from "./fakes.mjs";

/** Reconnect after a loss; the new socket, opened. */
function reconnect(socket, clock) {
  socket.drop(1006);
  clock.next();
  const next = FakeWebSocket.last;
  next.open();
  return next;
}

test("subscribe sends one frame with a generated id", () => {
  const { client } = makeClient();
  const socket = connectOpen(client);

  client.subscribe("weather", { airport: "JFK" }, () => {});
  client.subscribe("weather", { airport: "LGA" }, () => {});

  assert.deepEqual(socket.frames("subscribe"), [
    { op: "subscribe", id: "s1", source: "weather", params: { airport: "JFK" } },
    { op: "subscribe", id: "s2", source: "weather", params: { airport: "LGA" } },
  ]);
});

test("subscriptions made before connect are sent once open", () => {
  const { client } = makeClient();
  const handle = client.subscribe("departures", { airport: "EWR" }, () => {});

  const socket = connectOpen(client);

  assert.equal(socket.frames("subscribe").length, 1);
  assert.equal(handle.source, "departures");
  assert.deepEqual(handle.params, { airport: "EWR" });
});

test("data, status and subscribed reach the handle's callbacks", () => {
  const { client } = makeClient();
  const socket = connectOpen(client);
  const events = [];
  const handle = client.subscribe("weather", { airport: "JFK" }, (value, frame) =>
    events.push(["data", value, frame.seq]),
  {
    onStatus: (state) => events.push(["status", state]),
    onSubscribed: (frame) => events.push(["subscribed", frame.id]),
  });
  const [frame] = socket.frames("subscribe");

  confirm(socket, frame);
  socket.message(data(frame, 7, { temp_c: 3 }));

  assert.deepEqual(events, [
    ["subscribed", "s1"],
    ["status", "live"],
    ["data", { temp_c: 3 }, 7],
  ]);
  assert.equal(handle.state, "live");
  assert.equal(handle.lastSeq, 7);
});

test("two handles on one topic share one server subscription", async () => {
  const { client } = makeClient();
  const socket = connectOpen(client);
  const first = [];
  const second = [];

  // Phase: the same source and params, keys in another order.
  const a = client.subscribe("board", { airport: "JFK", rows: 25 }, (value) =>
    first.push(value),
  );
  const [frame] = socket.frames("subscribe");
  confirm(socket, frame);
  socket.message(data(frame, 1));
  const b = client.subscribe("board", { rows: 25, airport: "JFK" }, (value) =>
    second.push(value),
  );
  await settle();
  assert.equal(socket.frames("subscribe").length, 1);

  // Phase: a publication reaches both; the late one got the latest first.
  socket.message(data(frame, 2));
  assert.deepEqual(first, [1, 2]);
  assert.deepEqual(second, [1, 2]);

  // Phase: one handle goes: nothing is sent, the other still receives.
  a.unsubscribe();
  assert.deepEqual(socket.frames("unsubscribe"), []);
  socket.message(data(frame, 3));
  assert.deepEqual(first, [1, 2]);
  assert.deepEqual(second, [1, 2, 3]);

  // Phase: the last handle goes: the server subscription ends.
  b.unsubscribe();
  b.unsubscribe();
  assert.deepEqual(socket.frames("unsubscribe"), [{ op: "unsubscribe", id: "s1" }]);
  socket.message(data(frame, 4));
  assert.deepEqual(second, [1, 2, 3]);
});

test("a late handle hears the status and subscribed it missed", async () => {
  const { client } = makeClient();
  const socket = connectOpen(client);
  client.subscribe("weather", { airport: "JFK" }, () => {});
  confirm(socket, socket.frames("subscribe")[0], { state: "stale" });

  const events = [];
  const late = client.subscribe("weather", { airport: "JFK" }, null, {
    onStatus: (state) => events.push(state),
    onSubscribed: (frame) => events.push(frame.op),
  });
  assert.deepEqual(events, [], "callbacks never run inside subscribe()");
  await settle();

  assert.deepEqual(events, ["subscribed", "stale"]);
  assert.equal(late.state, "stale");
});

test("a new subscription after the last unsubscribe gets a new id", () => {
  const { client } = makeClient();
  const socket = connectOpen(client);

  client.subscribe("weather", { airport: "JFK" }, () => {}).unsubscribe();
  client.subscribe("weather", { airport: "JFK" }, () => {});

  const ids = socket.frames("subscribe").map((frame) => frame.id);
  assert.deepEqual(ids, ["s1", "s2"]);
});

test("unsubscribing while disconnected sends nothing and is not resent", () => {
  const { client, clock } = makeClient();
  const socket = connectOpen(client);
  const handle = client.subscribe("weather", { airport: "JFK" }, () => {});
  confirm(socket, socket.frames("subscribe")[0]);
  socket.drop(1006);

  handle.unsubscribe();
  clock.next();
  FakeWebSocket.last.open();

  assert.deepEqual(FakeWebSocket.last.sent, []);
});

test("after a reconnect every subscription is resent with since", () => {
  const { client, clock, resumes } = makeClient();
  let socket = connectOpen(client);
  const seen = [];
  client.subscribe("weather", { airport: "JFK" }, (value) => seen.push(value));
  client.subscribe("weather", { airport: "LGA" }, () => {});
  const [jfk, lga] = socket.frames("subscribe");
  confirm(socket, jfk);
  confirm(socket, lga);
  for (const seq of [10, 11, 12]) socket.message(data(jfk, seq));

  socket = reconnect(socket, clock);

  // Phase: since is the last seq seen, or 0 for a topic that had nothing.
  const frames = socket.frames("subscribe");
  assert.deepEqual(
    frames.map((frame) => [frame.id, frame.since]),
    [
      ["s1", 12],
      ["s2", 0],
    ],
  );

  // Phase: the replay and live publications, with repeats, are deduplicated.
  confirm(socket, frames[0], { resumed: true });
  for (const seq of [11, 12, 13, 14, 13, 12, 15]) socket.message(data(jfk, seq));
  assert.deepEqual(seen, [10, 11, 12, 13, 14, 15]);
  assert.deepEqual(resumes, [
    { source: "weather", params: { airport: "JFK" }, resumed: true, since: 12 },
  ]);
});

test("duplicate and older publications are dropped on one connection too", () => {
  const { client } = makeClient();
  const socket = connectOpen(client);
  const seen = [];
  const handle = client.subscribe("ticker", {}, (value) => seen.push(value));
  const [frame] = socket.frames("subscribe");
  confirm(socket, frame);

  for (const seq of [5, 5, 4, 6, 1, 8]) socket.message(data(frame, seq));

  assert.deepEqual(seen, [5, 6, 8]);
  assert.equal(handle.lastSeq, 8);
});

test("a resume the server could not serve tells the page", () => {
  const { client, clock, resumes } = makeClient();
  let socket = connectOpen(client);
  const seen = [];
  const subscribed = [];
  client.subscribe("weather", { airport: "EWR" }, (value) => seen.push(value), {
    onSubscribed: (frame) => subscribed.push(frame.resumed),
  });
  const [first] = socket.frames("subscribe");
  confirm(socket, first);
  socket.message(data(first, 40));

  socket = reconnect(socket, clock);
  const [again] = socket.frames("subscribe");
  assert.equal(again.since, 40);

  // The history no longer reaches seq 40: the latest follows instead.
  confirm(socket, again, { resumed: false });
  socket.message(data(again, 95));
  socket.message(data(again, 96));

  assert.deepEqual(resumes, [
    { source: "weather", params: { airport: "EWR" }, resumed: false, since: 40 },
  ]);
  assert.deepEqual(subscribed, [undefined, false]);
  assert.deepEqual(seen, [40, 95, 96]);
});

test("a subscription never confirmed is resent without since", () => {
  const { client, clock } = makeClient();
  let socket = connectOpen(client);
  client.subscribe("weather", { airport: "JFK" }, () => {});

  socket = reconnect(socket, clock);

  const [frame] = socket.frames("subscribe");
  assert.equal("since" in frame, false);
});

test("a refused subscription reports the error and is not resent", async () => {
  const { client, clock, errors } = makeClient();
  let socket = connectOpen(client);
  const refusals = [];
  const onError = (frame) => refusals.push(frame.code);
  client.subscribe("nope", {}, () => {}, { onError });
  const error = { op: "error", id: "s1", code: "unknown_source", message: "nope" };
  socket.message(error);

  // A handle joining later hears the refusal too.
  client.subscribe("nope", {}, () => {}, { onError });
  await settle();
  socket = reconnect(socket, clock);

  assert.deepEqual(refusals, ["unknown_source", "unknown_source"]);
  assert.deepEqual(errors, [error]);
  assert.deepEqual(socket.frames("subscribe"), []);
});

/** A client with one confirmed subscription that received seqs 1 to 3. */
function subscribedThrough3() {
  const made = makeClient();
  const socket = connectOpen(made.client);
  const seen = [];
  const errors = [];
  made.client.subscribe("ticker", {}, (value) => seen.push(value), {
    onError: (frame) => errors.push(frame.code),
  });
  const [first] = socket.frames("subscribe");
  confirm(socket, first);
  for (const seq of [1, 2, 3]) socket.message(data(first, seq));
  return { ...made, socket, first, seen, errors };
}

function overflow(frame, lastSeq, dropped) {
  return { op: "error", id: frame.id, code: "overflow", message: "", dropped, last_seq: lastSeq };
}

test("an overflow resumes the subscription from the gap under a new id", () => {
  const { socket, first, seen, errors, resumes } = subscribedThrough3();

  // Phase: the server dropped 4 to 8 and sends 9 next, on the old id.
  socket.message(overflow(first, 3, 5));
  socket.message(data(first, 9));

  // Phase: the old id ends; a new one resumes after seq 3.
  assert.deepEqual(socket.frames().slice(1), [
    { op: "unsubscribe", id: "s1" },
    { op: "subscribe", id: "s2", source: "ticker", params: {}, since: 3 },
  ]);
  const [, again] = socket.frames("subscribe");
  socket.message({ op: "unsubscribed", id: "s1" });
  confirm(socket, again, { resumed: true });
  for (const seq of [4, 5, 6, 7, 8, 9, 10]) socket.message(data(again, seq));

  assert.deepEqual(seen, [1, 2, 3, 4, 5, 6, 7, 8, 9, 10]);
  assert.deepEqual(errors, ["overflow"]);
  assert.deepEqual(resumes, [{ source: "ticker", params: {}, resumed: true, since: 3 }]);
});

test("an overflow whose gap the history lost says so and goes on", () => {
  const { socket, seen, resumes } = subscribedThrough3();
  const [first] = socket.frames("subscribe");

  socket.message(overflow(first, 3, 500));
  const [, again] = socket.frames("subscribe");
  confirm(socket, again, { resumed: false });
  socket.message(data(again, 600));

  assert.deepEqual(seen, [1, 2, 3, 600]);
  assert.equal(resumes[0].resumed, false);
});

test("after an overflow resume a reconnect resumes the new id", () => {
  const { socket, clock } = subscribedThrough3();
  const [first] = socket.frames("subscribe");
  socket.message(overflow(first, 3, 1));
  const [, again] = socket.frames("subscribe");
  confirm(socket, again, { resumed: true });
  socket.message(data(again, 5));

  const next = reconnect(socket, clock);

  assert.deepEqual(next.frames("subscribe"), [
    { op: "subscribe", id: "s2", source: "ticker", params: {}, since: 5 },
  ]);
});

test("an overflow without last_seq is reported but not resumed", () => {
  const { socket, errors } = subscribedThrough3();
  const [first] = socket.frames("subscribe");

  socket.message({ op: "error", id: "s1", code: "overflow", message: "", dropped: 2 });

  assert.deepEqual(errors, ["overflow"]);
  assert.deepEqual(socket.frames("unsubscribe"), []);
  assert.equal(first.id, "s1");
});

test("a failing callback does not stop the others", () => {
  const { client } = makeClient();
  const socket = connectOpen(client);
  const seen = [];
  const original = console.error;
  console.error = () => {};
  try {
    client.subscribe("ticker", {}, () => {
      throw new Error("widget bug");
    });
    client.subscribe("ticker", {}, (value) => seen.push(value));
    const [frame] = socket.frames("subscribe");
    confirm(socket, frame);
    socket.message(data(frame, 1));
  } finally {
    console.error = original;
  }
  assert.deepEqual(seen, [1]);
});

test("canonical JSON sorts keys at every depth", () => {
  assert.equal(
    canonicalJSON({ b: [{ y: 1, x: 2 }], a: "é", c: null }),
    '{"a":"é","b":[{"x":2,"y":1}],"c":null}',
  );
  assert.equal(canonicalJSON({}), "{}");
});
