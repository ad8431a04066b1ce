/**
 * A workflow step that runs Codex inside its own trace.
 *
 *   node dist/main.js [--run-id ID] -- codex exec --json "fix the failing test"
 *
 * The workflow's span is the trace's root (its name, input and metadata are the trace's); the
 * Codex run joins that trace as a child of it. Prints one JSON line: the ids to find both by.
 */
import { SpanStatusCode } from "@opentelemetry/api";
import { runCodex } from "./codex.js";
import { startTracing } from "./tracing.js";

async function main(argv: string[]): Promise<number> {
  const split = argv.indexOf("--");
  if (split < 0 || split === argv.length - 1) {
    process.stderr.write("usage: main.js [--run-id ID] -- codex exec --json PROMPT\n");
    return 2;
  }
  const own = argv.slice(0, split);
  const codexCommand = argv.slice(split + 1);
  const runIdAt = own.indexOf("--run-id");
  const runId = runIdAt >= 0 ? own[runIdAt + 1] : undefined;

  const tracing = startTracing("codex-runner");
  let exitCode = 1;
  await tracing.tracer.startActiveSpan("workflow", async (span) => {
    // what this runner's trace says about itself (Langfuse's attribute names)
    span.setAttribute("langfuse.trace.name", "nightly workflow");
    span.setAttribute("langfuse.observation.input", codexCommand[codexCommand.length - 1]);
    span.setAttribute("langfuse.trace.metadata.workflow", "nightly");
    if (process.env.CODEX_LANGFUSE_ENVIRONMENT) {
      span.setAttribute("langfuse.environment", process.env.CODEX_LANGFUSE_ENVIRONMENT);
    }
    try {
      const run = await runCodex(codexCommand, { runId, bridge: process.env.CODEX_LANGFUSE_BRIDGE });
      exitCode = run.exitCode ?? 1;
      span.setAttribute("langfuse.observation.output", `codex exited with ${run.exitCode ?? run.signal}`);
      if (exitCode !== 0) {
        span.setStatus({ code: SpanStatusCode.ERROR, message: `codex exited with ${exitCode}` });
      }
      const { traceId, spanId } = span.spanContext();
      process.stdout.write(JSON.stringify({ traceId, spanId, runId, exitCode, events: run.events.length }) + "\n");
    } finally {
      span.end();
    }
  });
  await tracing.shutdown(); // flush: the workflow's span goes to Langfuse before we exit
  return exitCode;
}

main(process.argv.slice(2)).then(
  (code) => process.exit(code),
  (error: unknown) => {
    process.stderr.write(`${error instanceof Error ? error.stack : String(error)}\n`);
    process.exit(1);
  },
);
