"""The course: a student writes every backward pass of the ViT, is told right or wrong
with a hint, then trains the engine on them.

    minivit exercises                      # the exercises, in learning order
    minivit exercises new my_backward.py   # the stubs: one function per exercise
    minivit exercises check my_backward.py # right / wrong (with a hint) / not done
    minivit train --layers my_backward.py  # a ViT trained on your gradients

exercises.py lists them, stubs.py is the file a student fills in, grade.py grades one
function, yours.py loads a student's file (or a notebook's functions) and puts its right
functions in the engine's place for a training run.
"""
