"""What a run directory holds, by name: shared by the runs (:mod:`falcon_rl.experiments.run`) and
the ablation's readers (:mod:`falcon_rl.ablation.cost`), which import it from here so that
neither imports the other.

A run directory (``train-agent --out``, an ablation's ``<scheduler>/seed<k>``) holds
``config.yaml``, ``results.json``, the agent (``agent.pt`` / ``agent.zip``), TensorBoard events
(``tb/``), while it runs the resume checkpoint :data:`CHECKPOINT_NAME`, and with
``agent.train_episodes`` the learning episodes in :data:`LEARN_DIR` (docs/ALGORITHM.md §13).
"""

#: sub-folder of a run that holds its learning episodes (``agent.train_episodes``)
LEARN_DIR = "train"

#: the resume checkpoint's file name in the run directory
CHECKPOINT_NAME = "resume.pt"

#: sub-folder of a run where MAFA's filter is trained first when ``mafa.filter_dir`` is null
FILTER_DIR = "filter"
