"""Reproducing the paper's CIFAR-10 studies: the studies and the paper's numbers
(`studies`), one command that runs a study (`reproduce`), the table of what its runs
achieved (`results_table`), Figure 6's training curves (`plot`) and Figure 7's layer
responses (`layer_responses`).
"""
