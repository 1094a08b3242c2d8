"""The study layer: the experiments the notebooks run, above the core (data, models, training).

- `definitions`: one declarative `Study` per notebook (its runs per profile, sweeps, figures,
  findings) and the profiles' sizes; `sweeps`: what a `Study` and a `Sweep` are;
- `cache`: the run cache (`run`, `cached`, `Run`); `records`: results carried between machines;
- `executors`: many runs at once (local workers, Ray); `budget`: training speed, epochs in a budget;
- `table`: the results schema (`Row`), `results.csv`; `stats`: paired per-seed comparisons;
- `findings`: the sentences about the results; `readme`: the README's generated sections;
- `report`: what a notebook does besides training; `compression`: notebook 05's variants;
- `pipeline`: what `./run_all.sh` runs.
"""
