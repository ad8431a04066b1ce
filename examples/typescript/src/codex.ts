/**
 * Running Codex through `codex-langfuse run`, inside the caller's trace.
 *
 * The bridge passes Codex's stdout and stderr through byte for byte and exits with Codex's code;
 * TRACEPARENT (W3C trace context) tells it which span the run belongs to, so the Codex run's
 * observations land in the caller's Langfuse trace, its root `agent` a child of the active span.
 */
import { spawn } from "node:child_process";
import { createInterface } from "node:readline";
import { context, propagation } from "@opentelemetry/api";

export interface CodexRun {
  exitCode: number | null;
  signal: NodeJS.Signals | null;
  events: Record<string, unknown>[]; // the JSONL events Codex printed
  stderr: string;
}

export interface CodexOptions {
  runId?: string; // default: a new one, which the bridge prints to stderr
  bridge?: string; // the `codex-langfuse` executable
  extraEnv?: Record<string, string>;
}

/** The active span as a W3C `traceparent` value, or undefined outside any span. */
export function activeTraceparent(): string | undefined {
  const carrier: Record<string, string> = {};
  propagation.inject(context.active(), carrier);
  return carrier.traceparent;
}

/** `codex-langfuse run [--run-id ID] -- <codexCommand...>` with the active span as TRACEPARENT. */
export function runCodex(codexCommand: string[], options: CodexOptions = {}): Promise<CodexRun> {
  const bridge = options.bridge ?? "codex-langfuse";
  const args = ["run", ...(options.runId ? ["--run-id", options.runId] : []), "--", ...codexCommand];
  const env: NodeJS.ProcessEnv = { ...process.env, ...options.extraEnv };
  const traceparent = activeTraceparent();
  if (traceparent) {
    env.TRACEPARENT = traceparent;
  } else {
    delete env.TRACEPARENT; // no active span: the run gets a trace of its own
  }
  // stdin ignored: the prompt is an argument; Codex's stdout and stderr come back to us
  const child = spawn(bridge, args, { stdio: ["ignore", "pipe", "pipe"], env });
  const events: Record<string, unknown>[] = [];
  let stderr = "";
  child.stderr.setEncoding("utf8");
  child.stderr.on("data", (chunk: string) => {
    stderr += chunk;
  });
  createInterface({ input: child.stdout, crlfDelay: Infinity }).on("line", (line) => {
    try {
      events.push(JSON.parse(line) as Record<string, unknown>);
    } catch {
      // not JSON (Codex prints JSONL; anything else is kept by the bridge, not needed here)
    }
  });
  return new Promise((resolve, reject) => {
    child.on("error", reject);
    child.on("close", (exitCode, signal) => resolve({ exitCode, signal, events, stderr }));
  });
}
