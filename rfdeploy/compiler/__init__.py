"""The searched model -> plain modules: the IR, the passes and the declared pipeline."""
