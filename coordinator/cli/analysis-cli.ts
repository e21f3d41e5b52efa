/**
 * Registers the LoRA analysis commands on the CLI: analyze, extract, sweep. Their work lives in
 * analyze-cmd.ts, extract-cmd.ts and sweep-cmd.ts; flags are parsed and checked here.
 */
import { InvalidArgumentError, type Command } from 'commander';
import type { LinearModule } from '../../shared/config.ts';
import { BACKENDS, type BackendName } from '../../node/backend-names.ts';
import { int, modules, num, oneOf } from './options.ts';
import { DEMO_MODEL_DIR } from '../io/paths.ts';

function intList(value: string): number[] {
  const list = value
    .split(',')
    .map((s) => s.trim())
    .filter(Boolean)
    .map(Number);
  if (list.length === 0 || list.some((n) => !Number.isInteger(n) || n < 1))
    throw new InvalidArgumentError(`expected a comma list of integers ≥ 1, got ${JSON.stringify(value)}`);
  return list;
}

/** "q_proj;v_proj;q_proj,v_proj": target sets separated by ';', modules within a set by ','. */
function targetSets(value: string): LinearModule[][] {
  const sets = value
    .split(';')
    .map((s) => s.trim())
    .filter(Boolean)
    .map(modules);
  if (sets.length === 0)
    throw new InvalidArgumentError(`expected target sets like "q_proj;q_proj,v_proj", got ${JSON.stringify(value)}`);
  return sets;
}

function rankPair(value: string): [number, number] {
  const list = intList(value);
  if (list.length !== 2) throw new InvalidArgumentError(`expected two ranks like 8,64, got ${JSON.stringify(value)}`);
  return [list[0], list[1]];
}

async function useBackend(name: BackendName): Promise<void> {
  const { initBackend } = await import('../../node/backend.ts');
  await initBackend(name, (line) => console.error(line));
}

export function registerAnalysisCommands(program: Command): void {
  program
    .command('analyze')
    .description(
      'LoRA analysis: spectrum, effective rank and (with --model) amplification of one adapter; ' +
        'subspace similarity φ of two',
    )
    .argument('<adapter>', 'PEFT adapter directory')
    .argument('[other]', 'a second adapter: compare the subspaces of their A matrices (LoRA paper Figures 3 and 4)')
    .option('--model <dir>', 'base model directory: adds ‖UᵀWV‖_F and the amplification factor (LoRA paper Table 7)')
    .option('--out <dir>', 'output directory (default: ADAPTER/analysis, or ADAPTER/subspace-vs-OTHER)')
    .option('--seed <n>', 'seed for the random directions of the baseline', int(0), 0)
    .action(async (adapter: string, other: string | undefined, o) => {
      if (o.model) await useBackend('cpu'); // only to load the weights; the analysis itself is float64 JS
      const { analyzeCommand } = await import('../commands/analyze.ts');
      await analyzeCommand(other ? [adapter, other] : [adapter], o);
    });

  program
    .command('extract')
    .description(
      'a LoRA adapter (PEFT files) from a fully fine-tuned model: truncated SVD of W_tuned − W_base per module',
    )
    .requiredOption('--base <dir>', 'base model directory')
    .requiredOption('--tuned <dir>', 'fully fine-tuned model directory (same architecture)')
    .requiredOption('-r, --rank <k>', 'rank of the extracted adapter', int(1))
    .requiredOption(
      '--out <dir>',
      'where to write adapter_config.json, adapter_model.safetensors and extract_report.json',
    )
    .option('--targets <list>', 'comma list of modules (default: every linear kind except lm_head)', modules)
    .option('--alpha <x>', 'lora_alpha written to the config (default: the rank, so α/r = 1)', num(Number.MIN_VALUE))
    .action(async (o) => {
      await useBackend('cpu');
      const { extractCommand } = await import('../commands/extract.ts');
      await extractCommand(o);
    });

  program
    .command('sweep')
    .description(
      'train the demo task for every rank × target set (LoRA paper Table 6), then run the analyses on the adapters',
    )
    .option('--model <dir>', 'base model directory (its tokenizer must cover the demo alphabet)', DEMO_MODEL_DIR)
    .option('--ranks <list>', 'comma list of ranks', intList, [1, 2, 4, 8, 64])
    .option('--target-sets <sets>', 'target sets separated by ";", modules by ","', targetSets, [
      ['q_proj'],
      ['v_proj'],
      ['q_proj', 'v_proj'],
      ['q_proj', 'k_proj', 'v_proj', 'o_proj'],
    ] as LinearModule[][])
    .option('--steps <n>', 'optimizer steps per run', int(1), 100)
    .option('--global-batch <n>', 'sequences per step', int(1), 32)
    .option('--lr <x>', 'peak learning rate', num(0, 10), 3e-3)
    .option('--alpha <x>', 'LoRA alpha, the same for every rank (as the paper: scaling α/r)', num(Number.MIN_VALUE), 16)
    .option('--seed <n>', 'seed for data, init and order', int(0), 7)
    .option('--train-size <n>', 'demo task training strings', int(1), 2000)
    .option('--eval-size <n>', 'held-out strings for eval loss and exact match', int(1), 200)
    .option(
      '--compare <r1,r2>',
      'ranks whose A subspaces are compared (Figure 3), on the first target set with q and v',
      rankPair,
      [8, 64] as [number, number],
    )
    .option('--no-seed-run', 'skip the extra run of the larger compared rank with seed + 1 (Figure 4)')
    .option(
      '--quick',
      'a smoke test: defaults become ranks 2,4 × targets q, q+v, 4 steps of 8, ' +
        '64 train / 16 eval strings, --compare 2,4',
      false,
    )
    .option('--out <dir>', 'results directory', 'runs/sweep')
    .option('--backend <name>', `tfjs backend: ${BACKENDS.join(' | ')}`, oneOf(BACKENDS), 'wasm')
    .action(async (o, cmd: Command) => {
      await useBackend(o.backend);
      const { QUICK, sweepCommand } = await import('../commands/sweep.ts');
      // --quick replaces defaults only: flags given on the command line still win.
      const quick = o.quick
        ? Object.fromEntries(Object.entries(QUICK).filter(([name]) => cmd.getOptionValueSource(name) !== 'cli'))
        : {};
      await sweepCommand({ ...o, ...quick });
    });
}
