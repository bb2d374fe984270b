// Agenda contender of the mongo-job-queue benchmark (see bench/contenders/agenda.py).
//
// A long-lived Node process driven by JSON lines on stdin, answering with one
// JSON line each on stdout:
//   {"cmd": "enqueue", "n": N}  -> insert N no-op jobs one by one (job.save()), Agenda stopped
//   {"cmd": "run", "n": N}      -> agenda.start(), time until N jobs completed, agenda.stop()
//   {"cmd": "quit"}
// Database commands are counted with the driver's command monitoring, on the
// client handed to Agenda. Agenda runs with its defaults except the job's
// concurrency (BENCH_CONCURRENCY) and maxConcurrency raised to match it.
"use strict";

const readline = require("readline");
const { MongoClient } = require("mongodb");
const { Agenda } = require("agenda");

const uri = process.env.BENCH_URI;
const dbName = process.env.BENCH_DB;
const collection = process.env.BENCH_COLLECTION || "agendaJobs";
const concurrency = parseInt(process.env.BENCH_CONCURRENCY || "1", 10);

const commands = {};
let completed = 0;
let target = 0;
let onDone = null;

function reply(obj) {
  process.stdout.write(JSON.stringify(obj) + "\n");
}

function snapshot() {
  return Object.assign({}, commands);
}

function delta(after, before) {
  const out = {};
  for (const [name, n] of Object.entries(after)) {
    const d = n - (before[name] || 0);
    if (d) out[name] = d;
  }
  return out;
}

async function main() {
  const client = new MongoClient(uri, { monitorCommands: true });
  client.on("commandStarted", (e) => {
    commands[e.commandName] = (commands[e.commandName] || 0) + 1;
  });
  await client.connect();
  const agenda = new Agenda({
    mongo: client.db(dbName),
    db: { collection },
    maxConcurrency: Math.max(20, concurrency),
  });
  agenda.define("noop", { concurrency }, async () => {});
  agenda.on("complete", () => {
    completed += 1;
    if (onDone && completed >= target) {
      const done = onDone;
      onDone = null;
      done();
    }
  });
  await agenda._ready;
  const versions = {
    agenda: require("agenda/package.json").version,
    "mongodb (node driver)": require("mongodb/package.json").version,
    node: process.version,
  };
  reply({ ready: true, versions });

  const lines = readline.createInterface({ input: process.stdin });
  for await (const line of lines) {
    let msg;
    try {
      msg = JSON.parse(line);
      if (msg.cmd === "quit") break;
      if (msg.cmd === "enqueue") {
        const t0 = process.hrtime.bigint();
        for (let i = 0; i < msg.n; i++) {
          await agenda.create("noop", { n: i }).save();
        }
        reply({ ok: true, seconds: Number(process.hrtime.bigint() - t0) / 1e9 });
      } else if (msg.cmd === "run") {
        completed = 0;
        target = msg.n;
        const before = snapshot();
        const finished = new Promise((resolve) => {
          onDone = resolve;
        });
        const t0 = process.hrtime.bigint();
        await agenda.start();
        await finished;
        const seconds = Number(process.hrtime.bigint() - t0) / 1e9;
        const used = delta(snapshot(), before);
        await agenda.stop();
        reply({ ok: true, seconds, commands: used });
      } else {
        reply({ ok: false, error: `unknown command ${msg.cmd}` });
      }
    } catch (err) {
      reply({ ok: false, error: String((err && err.message) || err) });
    }
  }
  await client.close();
}

main().catch((err) => {
  reply({ ok: false, fatal: true, error: String((err && err.message) || err) });
  process.exit(1);
});
