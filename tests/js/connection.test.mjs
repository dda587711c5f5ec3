/**
 * The client's connection: states, reconnect backoff with full jitter,
 * heartbeat and close codes. Fake WebSocket, fake timers, scripted random.
 */
import assert from "node:assert/strict";
import { test } from "node:test";

import {
  backoffDelay,
  ClientState,
  CloseError,
  isTerminalClose,
  VanillaClient,
} from "../../pubsub/static/pubsub/js/vanilla.js";
import { connectOpen, FakeWebSocket, makeClient } from "./fakes.mjs";

/** Let `count` dials fail in a row; the backoff delay before each retry. */
function failDials(client, clock, count) {
  const delays = [];
  for (let i = 0; i < count; i++) {
    FakeWebSocket.last.drop(1006);
    delays.push(clock.next());
  }
  return delays;
}

test("connect goes connecting then open", () => {
  const { client, states } = makeClient();

  // Phase: dial.
  client.connect();
  assert.equal(client.state, ClientState.CONNECTING);
  assert.equal(FakeWebSocket.instances.length, 1);
  assert.equal(FakeWebSocket.last.url, "ws://vanilla.test/ws/");

  // Phase: the server accepts.
  FakeWebSocket.last.open();
  assert.equal(client.state, ClientState.OPEN);
  assert.deepEqual(states, ["connecting", "open"]);
});

test("state events carry the new and the old state", () => {
  const { client } = makeClient();
  const seen = [];
  const off = client.on("state", (state, old) => seen.push([old, state]));

  connectOpen(client);
  off();
  client.close();

  assert.deepEqual(seen, [
    ["closed", "connecting"],
    ["connecting", "open"],
  ]);
});

test("backoff grows by the factor up to the maximum", () => {
  const { client, clock } = makeClient({
    random: () => 0.999,
    backoff: { initial: 500, max: 30000, factor: 2 },
  });
  client.connect();

  const delays = failDials(client, clock, 9);

  const caps = [500, 1000, 2000, 4000, 8000, 16000, 30000, 30000, 30000];
  assert.deepEqual(
    delays,
    caps.map((cap) => cap * 0.999),
  );
  assert.equal(client.state, ClientState.RECONNECTING);
  assert.equal(FakeWebSocket.instances.length, 10);
});

test("full jitter draws each delay from zero up to the cap", () => {
  // A small deterministic generator standing in for Math.random.
  let seed = 42;
  const random = () => {
    seed = (seed * 1103515245 + 12345) % 2 ** 31;
    return seed / 2 ** 31;
  };
  const options = { initial: 500, max: 30000, factor: 2 };

  for (let attempt = 0; attempt < 20; attempt++) {
    const cap = Math.min(30000, 500 * 2 ** attempt);
    for (let draw = 0; draw < 200; draw++) {
      const delay = backoffDelay(attempt, options, random);
      assert.ok(delay >= 0 && delay < cap, `attempt ${attempt}: ${delay} of ${cap}`);
    }
  }

  // The bounds themselves: random() of 0 retries at once.
  assert.equal(backoffDelay(3, options, () => 0), 0);
  assert.equal(backoffDelay(30, options, () => 0.5), 15000);
});

test("a connection that stayed open a while resets the backoff", () => {
  const { client, clock } = makeClient({
    random: () => 1,
    backoff: { initial: 100, max: 10000, factor: 2, resetAfter: 5000 },
  });
  client.connect();
  assert.deepEqual(failDials(client, clock, 4), [100, 200, 400, 800]);

  // Phase: open, but lost again at once: the backoff keeps growing.
  FakeWebSocket.last.open();
  clock.advance(1000);
  assert.deepEqual(failDials(client, clock, 1), [1600]);

  // Phase: open for longer than resetAfter, then lost: back to initial.
  FakeWebSocket.last.open();
  clock.advance(5000);
  assert.deepEqual(failDials(client, clock, 2), [100, 200]);
});

test("a lost connection goes reconnecting, then open again", () => {
  const { client, clock, states } = makeClient();
  const socket = connectOpen(client);

  socket.drop(1001, "going away");
  assert.equal(client.state, ClientState.RECONNECTING);
  clock.next();
  assert.equal(FakeWebSocket.instances.length, 2);
  FakeWebSocket.last.open();

  assert.deepEqual(states, ["connecting", "open", "reconnecting", "open"]);
});

test("retryable close codes reconnect", () => {
  for (const code of [1000, 1001, 1006, 1011, 4050, 4051, 4052, 4099]) {
    const { client, clock, errors } = makeClient();
    connectOpen(client).drop(code);
    assert.equal(client.state, ClientState.RECONNECTING, `close code ${code}`);
    clock.next();
    assert.equal(FakeWebSocket.instances.length, 2, `close code ${code}`);
    assert.deepEqual(errors, []);
  }
});

test("terminal close codes stop reconnecting and emit an error", () => {
  for (const code of [1009, 4000, 4003, 4008, 4049]) {
    const { client, clock, errors, states } = makeClient();
    connectOpen(client).drop(code, "go away");

    assert.equal(client.state, ClientState.CLOSED, `close code ${code}`);
    assert.deepEqual(states, ["connecting", "open", "closed"]);
    assert.equal(errors.length, 1);
    assert.ok(errors[0] instanceof CloseError);
    assert.equal(errors[0].code, code);
    assert.equal(errors[0].reason, "go away");
    assert.deepEqual(clock.delays(), [], "no timer may be left running");
    assert.equal(FakeWebSocket.instances.length, 1);
  }
  assert.ok(isTerminalClose(4003) && !isTerminalClose(4050));
});

test("a terminal close while reconnecting stops too", () => {
  const { client, clock } = makeClient();
  connectOpen(client).drop(1006);
  clock.next();

  FakeWebSocket.last.drop(4003);

  assert.equal(client.state, ClientState.CLOSED);
  assert.deepEqual(clock.delays(), []);
});

test("heartbeat pings every interval while frames come back", () => {
  const { client, clock } = makeClient({
    heartbeat: { interval: 1000, timeout: 500 },
  });
  const socket = connectOpen(client);

  for (let i = 0; i < 3; i++) {
    clock.advance(1000);
    socket.message({ op: "pong" });
  }

  assert.equal(socket.frames("ping").length, 3);
  assert.equal(client.state, ClientState.OPEN);
  assert.equal(socket.closedWith, null);
});

test("no frame within the heartbeat timeout reconnects", () => {
  const { client, clock, states } = makeClient({
    heartbeat: { interval: 1000, timeout: 500 },
    random: () => 0,
  });
  const socket = connectOpen(client);

  // Phase: a ping, then silence for just under the timeout.
  clock.advance(1000);
  assert.equal(socket.frames("ping").length, 1);
  clock.advance(499);
  assert.equal(client.state, ClientState.OPEN);

  // Phase: the timeout passes: the socket is given up, a new one dialled.
  clock.advance(1);
  assert.notEqual(socket.closedWith, null);
  assert.equal(client.state, ClientState.RECONNECTING);
  clock.advance(0);
  assert.equal(FakeWebSocket.instances.length, 2);

  // A late close event of the abandoned socket changes nothing.
  socket.drop(1006);
  FakeWebSocket.last.open();
  assert.deepEqual(states, ["connecting", "open", "reconnecting", "open"]);
});

test("any frame, not only pong, proves the connection alive", () => {
  const { client, clock } = makeClient({
    heartbeat: { interval: 1000, timeout: 800 },
  });
  const socket = connectOpen(client);

  clock.advance(1000);
  clock.advance(700);
  socket.message({ op: "error", id: null, code: "rate_limited", message: "slow" });
  clock.advance(1000);

  assert.equal(client.state, ClientState.OPEN);
});

test("a dial that never opens times out and is retried", () => {
  const { client, clock } = makeClient({
    heartbeat: { interval: 15000, timeout: 3000 },
    random: () => 0,
  });
  client.connect();

  clock.advance(3000);
  clock.advance(0);

  assert.equal(client.state, ClientState.RECONNECTING);
  assert.equal(FakeWebSocket.instances.length, 2);
});

test("close stops everything and connect starts again", () => {
  const { client, clock, states } = makeClient();
  const socket = connectOpen(client);

  client.close();
  assert.equal(client.state, ClientState.CLOSED);
  assert.deepEqual(socket.closedWith, { code: 1000, reason: "" });
  assert.deepEqual(clock.delays(), []);

  // The close event that follows is not a loss.
  socket.drop(1000);
  assert.equal(FakeWebSocket.instances.length, 1);

  client.connect();
  FakeWebSocket.last.open();
  assert.deepEqual(states, ["connecting", "open", "closed", "connecting", "open"]);
});

test("close while waiting to reconnect cancels the retry", () => {
  const { client, clock } = makeClient();
  connectOpen(client).drop(1006);

  client.close();

  assert.deepEqual(clock.delays(), []);
  assert.equal(client.state, ClientState.CLOSED);
});

test("close() from a state listener wins over the reconnect", () => {
  const { client, clock } = makeClient();
  const socket = connectOpen(client);
  client.on("state", (state) => {
    if (state === ClientState.RECONNECTING) client.close();
  });

  socket.drop(1006);

  assert.equal(client.state, ClientState.CLOSED);
  assert.deepEqual(clock.delays(), []);
});

test("subscribe() from an open listener is sent once", () => {
  const { client } = makeClient();
  client.on("state", (state) => {
    if (state === ClientState.OPEN) client.subscribe("weather", { airport: "JFK" });
  });

  const socket = connectOpen(client);

  assert.equal(socket.frames("subscribe").length, 1);
});

test("the url defaults to the page's host and scheme", () => {
  const saved = globalThis.location;
  try {
    globalThis.location = { protocol: "https:", host: "board.example:8443" };
    assert.equal(new VanillaClient().url, "wss://board.example:8443/ws/");
    globalThis.location = { protocol: "http:", host: "127.0.0.1:8000" };
    assert.equal(new VanillaClient().url, "ws://127.0.0.1:8000/ws/");
  } finally {
    globalThis.location = saved;
  }
});
