"""What every layer of `nas` needs: the user-error type, the data sets and their constants, cost counting.

This package imports none of `nas`, `predictors`, `onnx_bench` or `search_spaces`; they all may import it.
"""
