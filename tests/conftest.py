"""Test set-up: quiet TensorFlow, and this folder on sys.path so that every test module reads `helpers`."""
import os
import sys

os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '3')
os.environ.setdefault('TF_ENABLE_ONEDNN_OPTS', '0')
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
