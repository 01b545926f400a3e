"""Feature-set x area-aggregation ablation and the scale curve behind docs/results.md.

Logistic regression on cached per-network feature rows; learned networks; grouped splits
(4-fold GroupKFold by shard, leave-one-task-out). Prints one line per cell and writes JSON.

    python benchmarks/identification_ablation.py STORE CACHE_DIR OUT.json [MAX_NETWORKS]
"""
import sys, json, time, numpy as np
from sklearn.model_selection import GroupKFold
from rulefinder.store import ZooStore
from rulefinder.classify.dataset import network_table
from rulefinder.classify.cache import network_rows
from rulefinder.classify.evaluate import run_split, split_metrics
from rulefinder.classify.estimator import TARGETS
s = ZooStore.open(sys.argv[1])
t = network_table(s)
limit = int(sys.argv[4]) if len(sys.argv) > 4 else None
if limit: t = t.isel(sample=slice(0, limit))
ids = t.network.values.tolist()
rows = network_rows(s, ids, 8, 'stats+change+structure', sys.argv[2])
feats = [str(f) for f in rows.feature.values]
sets = {
  'stats': [f for f in feats if not f.startswith(('d_','s_'))],
  'stats+change': [f for f in feats if not f.startswith('s_')],
  'structure': [f for f in feats if f.startswith('s_') or f.startswith('depth')],
  'stats+change+structure': feats,
}
classes = {k: np.unique(t[k].values.astype(str)) for k in TARGETS}
shard = t.shard.values
kf = np.full(len(shard), '', dtype=object)
for k, (_, te) in enumerate(GroupKFold(4).split(shard, groups=shard)): kf[te] = f'k{k}'
out = {'n_networks': len(ids), 'n_rules': len(classes['rule']), 'rules': classes['rule'].tolist(), 'n_learned': int(t.learned.sum()),
       'networks_per_rule': {r: int((t.rule.values == r).sum()) for r in classes['rule']}}
print(out, flush=True)
def run(name, cols, agg, split, folds, train_mask=None):
    t0 = time.time()
    oof = run_split(rows.sel(feature=cols), t, folds, {'classifier': 'logreg', 'aggregate': agg, 'calibration_folds': 0}, classes, train_mask=train_mask)
    m = split_metrics(oof, t, split)
    key = f'{name}|{agg}|{split}'
    out[key] = {k: v for k, v in m.items() if k.endswith(f'bacc_{split}')}
    out[key]['sec'] = round(time.time() - t0)
    print(key, out[key], flush=True)
for agg in ('mean', 'depth'):
    for name, cols in sets.items():
        for split, folds in (('kfold_shard', kf), ('lofo_task', t.task.values.astype(object))):
            run(name, cols, agg, split, folds)
# scale curve: train on a random fraction of each training fold's shards
rng = np.random.default_rng(0)
ushards = np.unique(shard)
for frac in (0.25, 0.5, 1.0):
    keep_sh = set(rng.permutation(ushards)[: max(1, int(round(frac * len(ushards))))].tolist()) if frac < 1 else set(ushards.tolist())
    mask = np.isin(shard, list(keep_sh))
    per_rule = np.mean([((t.rule.values == r) & mask).sum() * 0.75 for r in classes['rule']])
    run(f'scale{frac}', feats, 'depth', 'kfold_shard', kf, train_mask=mask)
    out[f'scale{frac}|depth|kfold_shard']['train_networks_per_rule'] = round(float(per_rule), 1)
json.dump(out, open(sys.argv[3], 'w'), indent=1)
