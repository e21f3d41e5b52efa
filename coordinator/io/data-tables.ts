/**
 * Data files as tables: Parquet (hyparquet, with hyparquet-compressors for snappy, gzip, zstd,
 * brotli and lz4) and CSV (csv-parse: RFC 4180 with a header row). Both are streamed: Parquet a row
 * group (or, where the file has an offset index, a range of rows) at a time, CSV record by record,
 * so a large file is never held whole as objects. What a row means is io/dataset.ts's business;
 * this module only reads cells, and names where a row is: its 1-based data row (the header does not
 * count) and, in CSV, the line it starts on.
 */
import { createReadStream } from 'node:fs';
import { stat } from 'node:fs/promises';
import { parse, type CsvError, type Info } from 'csv-parse';
import { asyncBufferFromFile, parquetMetadataAsync, parquetReadObjects, parquetSchema } from 'hyparquet';
import type { AsyncBuffer, FileMetaData } from 'hyparquet';
import { compressors } from 'hyparquet-compressors';
import { ErrorCodes, fail } from '../../shared/errors.ts';

export interface TableRow {
  /** the requested columns' cells; CSV cells are strings, Parquet cells what the column holds (null for a null) */
  cells: Record<string, unknown>;
  /** 1-based data row */
  row: number;
  /** CSV: the line the record starts on (a quoted field may span lines) */
  line?: number;
  /** how errors name the row: `data.parquet: row 3`, `data.csv: row 3 (line 5)` */
  where: string;
}

export interface DataTable {
  /** the top-level column names, in file order */
  columns: string[];
  /** the rows in file order, with only `columns`' cells */
  rows(columns: readonly string[]): AsyncGenerator<TableRow>;
  /** releases the file (rows() does too when its loop ends) */
  close(): void;
}

const rowWhere = (path: string, row: number, line?: number) =>
  `${path}: row ${row}${line === undefined ? '' : ` (line ${line})`}`;

const cannotRead = (path: string, err: unknown): never =>
  fail(ErrorCodes.DATA, `${path}: cannot be read (${(err as Error).message})`);

/** Rows read at once within a row group, where the file's offset index lets hyparquet skip to them. */
export const PARQUET_ROWS_PER_READ = 4096;

/**
 * A Parquet file's rows. hyparquet reads only the requested columns and, for each read, only the
 * row group it falls in; a row group whose column chunks all have an offset index is read
 * `rowsPerRead` rows at a time (hyparquet then fetches just those pages), another whole.
 */
export async function openParquet(path: string, rowsPerRead = PARQUET_ROWS_PER_READ): Promise<DataTable> {
  let file: AsyncBuffer;
  try {
    file = await asyncBufferFromFile(path);
  } catch (err) {
    return cannotRead(path, err);
  }
  let metadata: FileMetaData;
  try {
    metadata = await parquetMetadataAsync(file);
  } catch (err) {
    return fail(ErrorCodes.DATA, `${path}: not a readable Parquet file (${(err as Error).message})`);
  }
  const columns = parquetSchema(metadata).children.map((c) => c.element.name);
  async function* rows(wanted: readonly string[]): AsyncGenerator<TableRow> {
    let groupStart = 0;
    for (const [g, group] of metadata.row_groups.entries()) {
      const groupEnd = groupStart + Number(group.num_rows);
      const indexed = group.columns.every((c) => c.offset_index_offset !== undefined);
      const step = indexed ? rowsPerRead : groupEnd - groupStart;
      for (let rowStart = groupStart; rowStart < groupEnd; rowStart += step) {
        const rowEnd = Math.min(groupEnd, rowStart + step);
        let objects: Record<string, unknown>[];
        try {
          objects = await parquetReadObjects({
            file,
            metadata,
            columns: [...wanted],
            rowStart,
            rowEnd,
            compressors,
            useOffsetIndex: indexed,
            rowFormat: 'object',
          });
        } catch (err) {
          return fail(
            ErrorCodes.DATA,
            `${path}: rows ${rowStart + 1}–${rowEnd} (row group ${g + 1}) cannot be read (${(err as Error).message})`,
          );
        }
        for (const [k, cells] of objects.entries()) {
          const row = rowStart + k + 1;
          yield { cells, row, where: rowWhere(path, row) };
        }
      }
      groupStart = groupEnd;
    }
  }
  return { columns, rows, close: () => {} };
}

/**
 * A CSV file's rows: RFC 4180 (fields quoted with ", "" for a quote inside, commas and line breaks
 * inside quotes), UTF-8 with or without a BOM, the first record the header. Blank lines are skipped;
 * every record must have as many fields as the header (the error names the first missing column).
 * The file is fed to csv-parse a chunk at a time, and a chunk's records are handed out before the
 * next is read (or before a syntax error later in the chunk), so errors come in file order.
 */
export async function openCsv(path: string): Promise<DataTable> {
  try {
    await stat(path);
  } catch (err) {
    return cannotRead(path, err);
  }
  interface CsvRecord {
    fields: string[];
    /** 1-based, the header included */
    record: number;
    line: number;
  }
  const queue: CsvRecord[] = [];
  // A record starts on the line after the previous record's last, past any blank lines (csv-parse
  // counts those); it spans one line more than the line breaks inside its quoted fields. (csv-parse's
  // own line count takes a CRLF inside quotes for two.)
  let nextLine = 1;
  let emptyLines = 0;
  const lineBreaks = (fields: string[]) => fields.reduce((n, f) => n + (f.match(/\r\n|\r|\n/g)?.length ?? 0), 0);
  const parser = parse({
    bom: true,
    relax_column_count: true,
    skip_empty_lines: true,
    on_record: (fields: string[], info: Info) => {
      const line = nextLine + (info.empty_lines - emptyLines);
      [nextLine, emptyLines] = [line + 1 + lineBreaks(fields), info.empty_lines];
      queue.push({ fields, record: info.records, line });
      return null; // kept here, not passed down the stream
    },
  });
  parser.on('error', () => {}); // reported through the write and end callbacks
  const input = createReadStream(path);
  const chunks = input[Symbol.asyncIterator]();
  let done = false;
  let failure: Error | null = null;
  const close = () => {
    input.destroy();
    parser.destroy();
  };
  const settle = (feed: (cb: (err?: Error | null) => void) => void) =>
    new Promise<void>((resolve, reject) => feed((err) => (err ? reject(err) : resolve())));

  /** The next record, parsing chunks until one is queued; null at the end of the file. */
  const next = async (): Promise<CsvRecord | null> => {
    while (queue.length === 0 && !done && failure === null) {
      let chunk: IteratorResult<Buffer>;
      try {
        chunk = await chunks.next();
      } catch (err) {
        close();
        return cannotRead(path, err);
      }
      try {
        if (chunk.done) {
          done = true;
          await settle((cb) => parser.end(cb));
        } else {
          await settle((cb) => parser.write(chunk.value, cb));
        }
      } catch (err) {
        failure = err as Error;
      }
    }
    const record = queue.shift();
    if (record) return record;
    if (failure === null) return null;
    close();
    const e = failure as CsvError;
    const line = nextLine + (typeof e.empty_lines === 'number' ? e.empty_lines - emptyLines : 0);
    const row = typeof e.records === 'number' && e.records > 0 ? `row ${e.records} ` : '';
    return fail(ErrorCodes.DATA, `${path}: ${row}(line ${line}): not valid CSV (${e.message})`);
  };

  const header = await next();
  if (header === null) {
    close();
    return fail(ErrorCodes.DATA, `${path}: empty; expected a header row naming the columns, then one row per record`);
  }
  const columns = header.fields;
  const seen = new Set<string>();
  for (const c of columns) {
    if (seen.has(c)) {
      close();
      fail(ErrorCodes.DATA, `${path}: line ${header.line}: the header names column "${c}" twice`);
    }
    seen.add(c);
  }
  async function* rows(wanted: readonly string[]): AsyncGenerator<TableRow> {
    const at = wanted.map((c) => columns.indexOf(c));
    try {
      for (let r = await next(); r !== null; r = await next()) {
        const row = r.record - 1;
        if (r.fields.length !== columns.length) {
          const what =
            r.fields.length < columns.length
              ? `column "${columns[r.fields.length]}" is missing (the row has ${r.fields.length} fields, ` +
                `the header ${columns.length})`
              : `the row has ${r.fields.length} fields, the header ${columns.length}`;
          fail(ErrorCodes.DATA, `${rowWhere(path, row, r.line)}: ${what}`);
        }
        const cells = Object.fromEntries(wanted.map((c, k) => [c, r.fields[at[k]]]));
        yield { cells, row, line: r.line, where: rowWhere(path, row, r.line) };
      }
    } finally {
      close();
    }
  }
  return { columns, rows, close };
}
