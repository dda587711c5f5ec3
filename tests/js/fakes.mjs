/**
 * Test doubles for the client: a WebSocket the test drives by hand, a clock
 * with timers that run only when the test advances it, and a scripted random.
 * Not a test file itself (node --test runs only *.test.mjs here).
 */
import { VanillaClient } from "../../pubsub/static/pubsub/js/vanilla.js";

/** A WebSocket whose server side is the test: open(), message(), drop(). */
export class FakeWebSocket {
  static instances = [];

  constructor(url) {
    this.url = url;
    this.readyState = 0;
    this.sent = [];
    this.closedWith = null;
    this.onopen = this.onmessage = this.onclose = this.onerror = null;
    FakeWebSocket.instances.push(this);
  }

  static reset() {
    FakeWebSocket.instances = [];
  }

  static get last() {
    return FakeWebSocket.instances.at(-1);
  }

  /** Frames the client sent, decoded; only those with `op` if given. */
  frames(op) {
    const frames = this.sent.map((text) => JSON.parse(text));
    return op ? frames.filter((frame) => frame.op === op) : frames;
  }

  send(text) {
    if (this.readyState !== 1) throw new Error("send on a socket that is not open");
    this.sent.push(text);
  }

  close(code = 1005, reason = "") {
    this.closedWith = { code, reason };
    this.readyState = 3;
  }

  // --- What the server does ---

  open() {
    this.readyState = 1;
    this.onopen?.({});
  }

  message(frame) {
    this.onmessage?.({ data: JSON.stringify(frame) });
  }

  drop(code = 1006, reason = "") {
    this.readyState = 3;
    this.onclose?.({ code, reason });
  }
}

/** setTimeout and clearTimeout on a clock that moves only in advance(). */
export class FakeClock {
  constructor() {
    this.time = 0;
    this.timers = new Map();
    this.nextId = 1;
    this.now = () => this.time;
    this.setTimeout = (fn, ms) => {
      const id = this.nextId++;
      this.timers.set(id, { fn, at: this.time + ms, ms });
      return id;
    };
    this.clearTimeout = (id) => this.timers.delete(id);
  }

  /** Delays (ms) of the timers waiting now, in the order they were set. */
  delays() {
    return [...this.timers.values()].map((timer) => timer.ms);
  }

  /** Move the clock forward, running each timer that falls due on the way. */
  advance(ms) {
    const end = this.time + ms;
    for (;;) {
      const due = [...this.timers.entries()]
        .filter(([, timer]) => timer.at <= end)
        .sort(([a, x], [b, y]) => x.at - y.at || a - b)[0];
      if (!due) break;
      const [id, timer] = due;
      this.timers.delete(id);
      this.time = timer.at;
      timer.fn();
    }
    this.time = end;
  }

  /** Run the next timer, however far away; returns its delay. */
  next() {
    const [timer] = [...this.timers.values()].sort((x, y) => x.at - y.at);
    if (!timer) throw new Error("no timer is waiting");
    const wait = timer.at - this.time;
    this.advance(wait);
    return wait;
  }
}

/** A client on fakes, with the states it went through in `states`. */
export function makeClient(options = {}) {
  FakeWebSocket.reset();
  const clock = new FakeClock();
  const random = options.random ?? (() => 0.5);
  const client = new VanillaClient({
    url: "ws://vanilla.test/ws/",
    WebSocket: FakeWebSocket,
    timers: clock,
    now: clock.now,
    random,
    ...options,
  });
  const states = [];
  const errors = [];
  const resumes = [];
  client.on("state", (state) => states.push(state));
  client.on("error", (error) => errors.push(error));
  client.on("resume", (info) => resumes.push(info));
  return { client, clock, states, errors, resumes };
}

/** Connect and open the first socket; returns it. */
export function connectOpen(client) {
  client.connect();
  const socket = FakeWebSocket.last;
  socket.open();
  return socket;
}

/** What the server answers to a subscribe frame, in order. */
export function confirm(socket, frame, { resumed, state = "live" } = {}) {
  const reply = { op: "subscribed", id: frame.id, source: frame.source };
  reply.params = frame.params;
  if (resumed !== undefined) reply.resumed = resumed;
  socket.message(reply);
  socket.message({ ...reply, op: "status", state });
}

export function data(frame, seq, value = seq) {
  return {
    op: "data",
    id: frame.id,
    source: frame.source,
    params: frame.params,
    seq,
    time: 1_700_000_000 + seq,
    data: value,
  };
}

/** Let queued microtasks (a late handle's catch-up) run. */
export function settle() {
  return new Promise((resolve) => setImmediate(resolve));
}
