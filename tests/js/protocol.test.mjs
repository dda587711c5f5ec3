/**
 * The client's protocol tables mirror pubsub/protocol.py exactly, and they
 * cannot be changed at run time.
 */
import assert from "node:assert/strict";
import { readFileSync } from "node:fs";
import { test } from "node:test";

import * as vanilla from "../../pubsub/static/pubsub/js/vanilla.js";

const PROTOCOL_PY = new URL("../../pubsub/protocol.py", import.meta.url);

/** {ClassName: {MEMBER: value}} for every enum class of protocol.py. */
function pythonTables() {
  const tables = {};
  let current = null;
  for (const line of readFileSync(PROTOCOL_PY, "utf8").split("\n")) {
    const header = line.match(/^class (\w+)\(enum\.\w+\):/);
    if (header) {
      current = tables[header[1]] = {};
      continue;
    }
    const member = line.match(/^ {4}([A-Z_]+) = (?:"([^"]*)"|(\d+))$/);
    if (current && member) {
      current[member[1]] = member[2] ?? Number(member[3]);
    }
  }
  return tables;
}

const TABLES = ["ClientOp", "ServerOp", "ErrorCode", "CloseCode", "SourceState"];

test("every protocol table matches pubsub/protocol.py", () => {
  const tables = pythonTables();

  assert.deepEqual(Object.keys(tables).sort(), [...TABLES].sort());
  for (const name of TABLES) {
    assert.deepEqual({ ...vanilla[name] }, tables[name], name);
  }
});

test("the tables are frozen", () => {
  for (const name of TABLES) {
    assert.ok(Object.isFrozen(vanilla[name]), name);
  }
  assert.ok(Object.isFrozen(vanilla.ClientState));
  assert.deepEqual(Object.values(vanilla.ClientState).sort(), [
    "closed",
    "connecting",
    "open",
    "reconnecting",
  ]);
});
