"""dadh command line (Fire): `python main.py COMMAND [--option value ...]`, the top of the house.

`train` drives any method of models.METHODS through its interface (models/method.py): epochs,
validation, the kept model, a resumable last.pth after every epoch, signals between steps, the NaN
stop, visdom and history.json. The other commands are a few lines each over the modules doing the
work (runs.py assembles a run). Problems the user can fix end as one line and a non-zero exit
(utils.errors.UserError). Nothing imports this file.
"""
import contextlib
import json as json_lib  # `search` has a --json option
import shlex
import sys
import time
from datetime import datetime
from pathlib import Path

import fire
import numpy as np
import torch

import config
import runs
from utils import calc_map_k, distributed, p_top_k, pr_curve
from utils.checkpoint import atomic_save, atomic_write
from utils.errors import UserError, cli
from utils.interrupt import GracefulStop
from utils.memory import reuse_freed_memory
from utils.metrics import P_AT_K
from utils.rng import rng_state, seed_everything, set_rng_state
from utils.visualize import Visualizer


def first_non_finite(losses):
    """(step, term) of the first non-finite loss of an epoch ({term: values}), or None."""
    bad = [(int(values.isfinite().logical_not().nonzero()[0]), term)
           for term, values in losses.items() if not values.isfinite().all()]
    return min(bad, key=lambda found: found[0]) if bad else None


@cli
def train(**options):
    """Under torchrun every rank runs this with the same options (utils/distributed.py): rank 0
    alone writes files, plots and prints; every other step is taken identically everywhere."""
    cfg = config.parse(options)
    world = distributed.start()
    print(f'configuration:\n{cfg}')
    with world.one_outcome():  # a bad input on one rank ends every rank with its line
        device = runs.resolve_device(world.device_name(cfg.device))
        runs.configure_device(cfg.tf32, cfg.amp, device)
        out = runs.prepare_run_dir(cfg, world)
        last = runs.load_last(out, cfg, device) if cfg.resume else None
        seed_everything(cfg.seed)  # the same seed on every rank: the same random draws
        splits = runs.load_splits(cfg, device, out if cfg.resume else None)
        generator = torch.Generator().manual_seed(cfg.seed)  # shuffles and batch draws
        mix = cfg.method.training_mix(cfg.options)
        if mix is not None:
            splits.append_mixed_training(generator, mix)
            print(f'data_enhance: {splits.sizes()["train"]} training samples with the mixed ones')
        method = runs.make_method(cfg, splits.raw_images, splits.sizes()['train'], device)
    if world.size > 1:
        if device.type == 'cuda':
            torch.cuda.set_device(device)
        method.distribute(world, device)
        print(f'torchrun: {world.size} processes, {cfg.batch_size} rows per global batch')
    epochs = cfg.max_epoch
    if method.epoch_limit and method.epoch_limit[0] < epochs:
        epochs, why = method.epoch_limit
        print(f'--model {cfg.model} ends after epoch {epochs} of --max_epoch {cfg.max_epoch}: {why}')
    keep_last = cfg.select_on == 'last' or not cfg.valid  # the model of the last epoch is kept
    # mapi2t/mapt2i: the queries' MAPs; valid_*: the held-out rows' (--select_on valid). 'best' is
    # the best pair on the rows that select, 'best_query' the queries' MAPs of that epoch.
    history = {'epoch': [], 'loss': [], 'lr': [], 'seconds': [], 'valid_epoch': [], 'mapi2t': [],
               'mapt2i': [], 'valid_mapi2t': [], 'valid_mapt2i': [], 'select_on': cfg.select_on,
               'best': None, 'best_epoch': None, 'best_query': None, 'losses': {}}
    start_epoch = saved_epoch = 0
    if last:
        method.load_state_dict(last['method'])
        set_rng_state(last['rng'], generator)
        history.update(last['history'])
        if history['best'] and not history['best_epoch']:  # a last.pth older than best_epoch
            pairs = list(zip(history['mapi2t'], history['mapt2i']))
            history.update(best_epoch=history['valid_epoch'][pairs.index(tuple(history['best']))],
                           best_query=history['best'])
        start_epoch = saved_epoch = last['epoch']
        print(f'resuming {out / runs.LAST_FILE}: {start_epoch} epochs done')
    vis = Visualizer(cfg.vis_env if world.is_main else None, cfg.vis_server, cfg.vis_port,
                     out / 'visdom.log')

    with GracefulStop() as stop:
        batches = runs.Batches(splits, stop, world)
        for epoch in range(start_epoch, epochs):
            start = time.time()
            batches.desc = f'epoch {epoch + 1}/{epochs}'
            losses = method.train_epoch(batches, generator)
            if signum := world.agree(stop):
                stop_training(signum, out, epoch, saved_epoch)
            bad = first_non_finite(losses)  # the same losses on every rank
            if bad:
                raise UserError(f'the {bad[1]} loss became NaN or inf in epoch {epoch + 1}, batch '
                                f'{bad[0] + 1}; stopped, {out} keeps the last good epoch (try a '
                                'smaller learning rate)')
            method.end_epoch(epoch, batches.labels)
            seconds = time.time() - start
            means = {term: values.mean().item() for term, values in losses.items()}
            summary = f'epoch {epoch + 1}/{epochs}: loss {means["loss"]:.4f}, {seconds:.1f} s'
            for key, value in (('epoch', epoch + 1), ('loss', means['loss']), ('lr', method.lr),
                               ('seconds', seconds)):
                history[key].append(value)
            vis.plot('loss', epoch + 1, means['loss'])
            if method.lr is not None:
                vis.plot('lr', epoch + 1, method.lr, log_y=True)
            for term, value in means.items():
                history['losses'].setdefault(term, []).append(value)
                if term != 'loss':
                    vis.plot(f'loss_{term}', epoch + 1, value)

            if cfg.valid and (epoch + 1) % cfg.valid_freq == 0:
                # Every rank validates (on the whole sets, as rank 0 alone would take as long), so
                # every rank keeps the same history and best.
                maps = runs.evaluate(method, splits)
                if signum := world.agree(stop):
                    stop_training(signum, out, epoch, saved_epoch)
                mapi2t, mapt2i = maps['query']
                for key, value in (('valid_epoch', epoch + 1), ('mapi2t', mapi2t), ('mapt2i', mapt2i)):
                    history[key].append(value)
                summary += f', MAP(i->t) {mapi2t:.4f}, MAP(t->i) {mapt2i:.4f}'
                vis.plot('mapi2t', epoch + 1, mapi2t)
                vis.plot('mapt2i', epoch + 1, mapt2i)
                if 'valid' in maps:
                    history['valid_mapi2t'].append(maps['valid'][0])
                    history['valid_mapt2i'].append(maps['valid'][1])
                    summary += f', held-out MAP {maps["valid"][0]:.4f} / {maps["valid"][1]:.4f}'
                if not keep_last and method.is_better(*maps[cfg.select_on], history['best']):
                    history.update(best=maps[cfg.select_on], best_epoch=epoch + 1,
                                   best_query=maps['query'])
                    if world.is_main:
                        method.save_best(out)
                    # The published protocol's line as it was; the held-out rule names itself.
                    summary += (' (best: saved)' if cfg.select_on == 'query'
                                else f' (best on {runs.SELECTION[cfg.select_on]}: saved)')
            if world.is_main:
                if keep_last and epoch + 1 == epochs:
                    method.save_best(out)
                if epoch == start_epoch:
                    runs.write_run_files(out, cfg, splits)
                runs.write_results(out, history)
            if (epoch + 1) % cfg.save_freq == 0 or epoch + 1 == epochs:
                if world.is_main:
                    atomic_save({'config': cfg.options, 'epoch': epoch + 1,
                                 'method': method.state_dict(), 'history': history,
                                 'rng': rng_state(generator)}, out / runs.LAST_FILE)
                saved_epoch = epoch + 1
            print(summary, flush=True)

    history['finished'] = True  # what `status` reads: the run went to its end
    if not keep_last and not history['best']:  # --valid_freq above the epochs run: none validated
        print(f'no epoch was validated (--valid_freq {cfg.valid_freq}, {epochs} epochs): the last '
              "epoch's model is kept")
        keep_last = True
        if world.is_main:
            method.save_best(out)
    if keep_last:  # as the published code: the final model's MAP, from its last validation if any
        validated = history['valid_epoch'] and history['valid_epoch'][-1] == epochs
        history['final'] = ((history['mapi2t'][-1], history['mapt2i'][-1]) if validated
                            else runs.evaluate(method, splits)['query'])
    if world.is_main:
        runs.write_results(out, history)
    if keep_last:
        print(f"...training done: final MAP(i->t): {history['final'][0]:.4f}, "
              f"MAP(t->i): {history['final'][1]:.4f}; model in {runs.model_file(cfg)}")
    else:
        mapi2t, mapt2i = history['best_query']
        print(f"...training done: best MAP(i->t): {mapi2t:.4f}, MAP(t->i): {mapt2i:.4f}, epoch "
              f"{history['best_epoch']} chosen on {runs.SELECTION[cfg.select_on]}; model in "
              f"{runs.model_file(cfg)}")
    world.finish()


def stop_training(signum, out, epoch, saved_epoch):
    """Leave on SIGINT/SIGTERM, keeping the last.pth of a completed epoch, and say how to resume."""
    if not saved_epoch:
        print(f'stopped during epoch {epoch + 1}; no epoch was saved yet, so start again without '
              '--resume', file=sys.stderr, flush=True)
    else:
        given = any(arg.split('=')[0] == '--resume' for arg in sys.argv)
        command = shlex.join([sys.executable, *sys.argv] + ([] if given
                                                           else ['--resume', 'True']))
        print(f'stopped during epoch {epoch + 1}; {out / runs.LAST_FILE} keeps epoch {saved_epoch}. '
              f'Resume (from epoch {saved_epoch + 1}) with:\n  {command}', file=sys.stderr, flush=True)
    distributed.leave(128 + signum)


@cli
def test(**options):
    """The kept model's MAP, MAP@k and precision@K in both directions, and their files."""
    cfg = config.parse(options)
    device = runs.resolve_device(cfg.device)
    seed_everything(cfg.seed)
    out, trained, data, method = runs.load_trained(cfg, device)
    splits = runs.splits_of(cfg, data, device, out)
    figures = {}
    for direction, pair in runs.retrieval_pairs(method, splits).items():
        precision, recall = pr_curve(*pair)
        p_at_k = p_top_k(*pair)
        figures[direction] = {'map': calc_map_k(*pair),
                              **{f'map@{k}': calc_map_k(*pair, k=k) for k in cfg.map_at},
                              **{f'p@{k}': float(p) for k, p in zip(P_AT_K, p_at_k)}}
        atomic_write(out / f'pr_{direction}.npy', lambda f: np.save(f, np.stack([precision, recall])))
        atomic_write(out / f'p_at_k_{direction}.npy', lambda f: np.save(f, np.stack([P_AT_K, p_at_k])))
    history = json_lib.loads((out / 'history.json').read_text()) if (out / 'history.json').is_file() else {}
    # The rule that chose the model: 'query', 'valid', or 'last' (the last epoch's model).
    selection = 'last' if 'final' in history else trained.get('select_on', 'query')
    report = {'dataset': cfg.dataset, 'model': cfg.model, 'bit': cfg.bit,
              'checkpoint': str(runs.model_file(cfg)), 'date': datetime.now().isoformat(timespec='seconds'),
              'data_path': str(cfg.data_path), 'split': splits.split.source or cfg.split,
              'query_size': splits.sizes()['query'], 'database_size': splits.sizes()['database'],
              'select_on': selection, 'best_epoch': history.get('best_epoch'),
              'options': trained or cfg.options, **figures}
    atomic_write(out / 'metrics.json', lambda f: f.write(json_lib.dumps(report, indent=2).encode()))

    print(f'{"":10}{"i->t":>9}{"t->i":>9}')
    for name in figures['i2t']:
        print(f'{name.upper():10}{figures["i2t"][name]:9.4f}{figures["t2i"][name]:9.4f}')
    print(f'metrics, precision-recall and precision@K arrays written to {out}')
    if selection != 'last' and history.get('best_epoch'):
        print(f"model: epoch {history['best_epoch']}, chosen on {runs.SELECTION[selection]} "
              f"(--select_on {selection})")
    print(f"...test MAP: MAP(i->t): {figures['i2t']['map']:.4f}, MAP(t->i): {figures['t2i']['map']:.4f}")


@cli
def split(out, seed=None, overwrite=False, **options):
    """A split file for --split FILE (any method reads it): the data set's fixed rows (the DADH
    layout), or with --seed N a random permutation drawn from N; held-out rows included."""
    cfg = config.parse(options)
    split_rows, sha = runs.write_split(cfg, out, seed, overwrite)
    sizes = {name: len(rows) for name, rows in split_rows.parts().items()}
    print(f'wrote {out} (sha256 {sha[:12]}): {sizes} of {split_rows.rows} rows')


@cli
def status(**options):
    """One line: the state of the run folder of these options (new, partial, trained, tested) and
    the folder; the run scripts read it to skip finished runs and resume half-done ones."""
    state, out = runs.run_state(config.parse(options))
    print(state, out)


@cli
def plot(**options):
    """PNG figures of a run (MAP curves with the loss, precision-recall, precision@K)."""
    from utils.plot import plot_run
    cfg = config.parse(options)
    for path in plot_run(runs.run_dir(cfg), cfg.model, cfg.dataset, cfg.bit):
        print(f'wrote {path}')


@cli
def report(checkpoint_dir='checkpoints', **unknown):
    """The paper's table over every tested run under --checkpoint_dir, and its figures."""
    from utils.report import write_report
    if unknown:
        raise UserError(f'report takes only --checkpoint_dir, got --{next(iter(unknown))}')
    table, written = write_report(Path(checkpoint_dir))
    print(table)
    for path in written:
        print(f'wrote {path}')


@cli
def visdom(port=8097, hostname='127.0.0.1', env_path=None, static_dir=None):
    """A visdom server that needs no internet: its page's assets come from `make visdom-assets`."""
    from utils.visualize import start_server
    start_server(port, hostname, env_path, static_dir)


@cli
def prepare(**options):
    """Raw images, tags and labels (MIRFlickr-25K, NUS-WIDE, a manifest) -> training file + sidecar."""
    from datasets.prepare import prepare as run_prepare
    values = config.parse_prepare(options)
    device = runs.resolve_device(values['device'])
    runs.configure_device(False, None, device)  # CNN-F in float32 (not cuDNN's TF32), as queries
    values['device'] = str(device)
    run_prepare(**values)


@cli
def encode(out, modality='both', rows=':', append=False, **options):
    """Codes of the rows of a data file (--data_path) in an HDF5 codes file (--out)."""
    from retrieval import api
    run = api.load_run(**options)
    api.write(run, out, modality, rows, append)
    codes = api.open_codes(out)
    print(f'wrote {"+".join(codes.modalities)} codes of {codes.count} rows to {out}')


@cli
def search(database, text=None, image=None, rows=None, modality='image', topk=20, index='exact',
           json=False, same_modality=False, nprobe=16, **options):
    """The top --topk items of --database for a query: --text words, an --image file, or --rows
    of --data_path (of --modality)."""
    from retrieval import api
    if not isinstance(topk, int) or topk <= 0:
        raise UserError(f'--topk must be a positive integer, got {topk!r}')
    # With --json, stdout holds the JSON alone: every other line of every module goes to stderr.
    with contextlib.redirect_stdout(sys.stderr if json else sys.stdout):
        codes = api.open_codes(database)  # a bad codes file is refused before the model loads
        run = api.load_run(**options)
        queries, modality = api.encode_query(run, text, image, rows, modality)
        results, notes = api.search(run, database, queries, modality, topk, index, same_modality,
                                    nprobe)
    for note in notes:
        print(note, file=sys.stderr)
    records = [[{'rank': hit.rank, 'id': hit.row if hit.source_id is None else hit.source_id,
                 'row': hit.row, 'data_file': hit.data_file, 'distance': hit.distance,
                 'labels': hit.labels} for hit in hits] for hits in results]
    if json:
        print(json_lib.dumps(records if len(records) > 1 else records[0]))
        return
    for q, hits in enumerate(records):
        if len(records) > 1:
            print(f'query {q + 1}:')
        for hit in hits:  # a row number alone is ambiguous in a file of several data files' rows
            name = (f"{Path(hit['data_file']).name}:{hit['id']}"
                    if len(codes.data_files) > 1 and hit['id'] == hit['row'] else hit['id'])
            print(f"{hit['rank']:>5}  {name!s:<20} {hit['distance']:>4}  "
                  f"{' '.join(map(str, hit['labels']))}")


@cli
def index(database, index='ivf', nlist=None):
    """Build a FAISS binary index (flat, ivf, hnsw) beside a codes file, for search --index."""
    from retrieval.index import build_index
    for path in build_index(database, index, nlist):
        print(f'wrote {path}')


def help(model=None):
    print(config.usage(model))


if __name__ == '__main__':
    reuse_freed_memory()
    fire.Fire({'train': train, 'test': test, 'split': split, 'status': status, 'plot': plot,
               'visdom': visdom, 'report': report, 'prepare': prepare, 'encode': encode, 'search': search,
               'index': index, 'help': help})
