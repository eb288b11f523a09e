import pytest

from tests.helpers import write_random_dataset


@pytest.fixture(scope="session")
def random_dataset(tmp_path_factory):
    """Prefix of a small random-token Megatron dataset shared by the session's tests."""
    return write_random_dataset(str(tmp_path_factory.mktemp("data") / "random_text_document"))


@pytest.fixture
def unused_port():
    from tests.helpers import free_port

    return free_port()


# Tests marked `long` (run by `make test-all`, not by `make test` and CI): the rest of a
# layout x dtype x mode matrix whose hardest cases stay in CI (TP2xPP2, the distributed
# optimizer, bf16 at TP), and end-to-end runs that repeat what another CI test covers.
# Listed here in one place so that what CI leaves out is visible (README, "Tests").
LONG = {
    "tests/distributed/test_layerwise_invariance.py": [
        "test_same_removals_arch_and_weights[tp2-greedy]", "test_same_removals_arch_and_weights[tp2-adaptive]",
        "test_same_removals_arch_and_weights[pp2-greedy]", "test_same_removals_arch_and_weights[pp2-adaptive]",
        "test_same_removals_arch_and_weights[dp2_distopt-greedy]", "test_bf16_choices_differ_only_at_near_ties[adaptive]",
        "test_bf16_choices_differ_only_at_near_ties[greedy]", "test_same_removals_arch_and_weights[dp2_distopt-adaptive]",
        # the whole file: tests/reliability/test_layerwise_resume.py checks greedy and adaptive
        # across layouts in CI (TP=2 -> PP=2, DP=2 distributed optimizer -> TP=2)
        "test_references_make_layers_differ", "test_same_removals_arch_and_weights[tp2pp2-greedy]",
        "test_same_removals_arch_and_weights[tp2pp2-adaptive]"],
    "tests/distributed/test_local_round.py": [
        "test_local_round_equals_gather_and_rebuild_bit_for_bit[fp32-tp2]",
        "test_local_round_equals_gather_and_rebuild_bit_for_bit[fp32-tp2xdp2_distopt]",
        "test_local_round_equals_gather_and_rebuild_bit_for_bit[bf16-tp2]",
        "test_local_round_equals_gather_and_rebuild_bit_for_bit[bf16-pp2]",
        "test_local_round_equals_gather_and_rebuild_bit_for_bit[bf16-dp2_distopt]",
        "test_a_round_sends_only_what_moves"],
    "tests/distributed/test_obs_update.py": [
        "test_same_removals_weights_and_losses[tp2]", "test_same_removals_weights_and_losses[pp2]",
        "test_same_removals_weights_and_losses_in_bf16[dp2_distopt]", "test_same_removals_weights_and_losses[dp2_distopt]",
        "test_greedy_layers_with_obs_match_across_tensor_parallel_ranks"],
    "tests/distributed/test_parallel_equivalence.py": [
        "test_matches_single_process[tp2-fp32]", "test_matches_single_process[tp2-bf16]",
        "test_matches_single_process[pp2_tied-bf16]", "test_matches_single_process[dp2_tied-bf16]",
        "test_matches_single_process[dp2_tied-fp32]",
        "test_matches_single_process[dp2_distributed_optimizer-bf16]"],
    "tests/distributed/test_pruning_invariance.py": [
        "test_same_removals_arch_and_weights[tp2]", "test_same_removals_arch_and_weights[pp2]",
        "test_same_removals_arch_and_weights[dp2]", "test_same_removals_arch_and_weights_in_bf16[tp2]",
        "test_same_removals_arch_and_weights_in_bf16[pp2]", "test_same_removals_arch_and_weights_in_bf16[dp2]",
        "test_same_removals_arch_and_weights[tp2dp2_distopt]", "test_same_removals_arch_and_weights_in_bf16[tp2pp2]"],
    "tests/distributed/test_training_state.py": [
        "test_bf16_round_keeps_masters_moments_and_step_bit_exact[attn-tp1]",
        "test_bf16_round_keeps_masters_moments_and_step_bit_exact[ffn-tp1]",
        "test_bf16_round_keeps_masters_moments_and_step_bit_exact[stem-tp1]",
        "test_bf16_round_keeps_masters_moments_and_step_bit_exact[attn-dp2_distopt]",
        "test_bf16_round_keeps_masters_moments_and_step_bit_exact[ffn-dp2_distopt]",
        "test_bf16_round_keeps_masters_moments_and_step_bit_exact[stem-dp2_distopt]",
        "test_rounds_free_the_old_model_ddp_and_optimizer[plain]", "test_no_tensor_travels_through_an_object_collective[pp2]"],
    "tests/distributed/test_removal_exactness.py": [
        "test_removal_exact_and_optimizer_state_kept[attn-tp1]", "test_removal_exact_and_optimizer_state_kept[ffn-tp1]"],
    "tests/distributed/test_speed_settings.py": ["test_recomputation_reaches_megatron_and_keeps_the_losses[selective]",
                                                 "test_data_loader_workers_keep_the_losses",
                                                 "test_recomputation_reaches_megatron_and_keeps_the_losses[full]"],
    "tests/hf/test_convert.py": ["test_round_trip_and_logits[mha_untied]", "test_round_trip_and_logits[gqa_head_dim_untied]",
                                 # expand-kv logits: tests/hf/test_remote_code.py::test_pruned_arch_remote_code_and_expand_kv
                                 "test_expand_kv_is_a_plain_llama_with_the_same_logits", "test_missing_shard_and_missing_tensor", "test_bf16_round_trip_keeps_dtype",
                                 "test_checkpoint_missing_a_tensor"],
    "tests/hf/test_thin_layer.py": ["test_thinnest_tensor_parallel_layer_resumes_at_tp2_as_uninterrupted"],
    "tests/launch/test_slurm.py": [
        "test_pap_container_runs_every_step_through_srun_in_the_image",
        # the signal path itself: tests/integration/test_train_cli.py::test_exit_signal_saves_and_stops
        "test_usr1_checkpoints_requeues_and_finishes_with_the_same_removals"],
    "tests/distributed/test_final_alignment.py": ["test_the_last_round_aligns_widths_the_same_at_tp1_and_tp2"],
    "tests/hf/test_remote_code.py": ["test_training_starts_from_converted_weights"],
    # the hardest shape (uneven groups, padded) stays in CI
    "tests/hf/test_serving.py": ["test_nemotron_nas_export_serves_like_the_checkpoint[uniform]",
                                 "test_nemotron_nas_export_serves_like_the_checkpoint[greedy]",
                                 "test_nemotron_nas_export_serves_like_the_checkpoint[hidden]"],
    # one-shot and scratch: tests/unit/test_baselines.py
    "tests/integration/test_baselines.py": ["test_oneshot_then_scratch_then_training"],
    "tests/integration/test_gpu_check.py": ["test_gpu_check_passes_on_cpu"],
    "tests/integration/test_train_cli.py": [
        "test_mid_window_resume_at_another_tp_pp_layout[dp2_distributed_optimizer]",
        "test_sigkill_mid_pruning_resumes_with_the_same_decisions", "test_exit_file_saves_and_stops_then_the_run_goes_on",
        "test_bf16_resume_keeps_fp32_masters[plain]", "test_distributed_optimizer_checkpoint_resumes_at_another_layout[fp32]"],
    "tests/distributed/test_loss_term.py": ["test_a_zero_loss_term_changes_nothing_and_a_real_one_trains[1]"],
    "tests/distributed/test_distill.py": [
        "test_distillation_matches_plain_torch_on_one_process[tp2_T2]",
        "test_distillation_matches_plain_torch_on_one_process[pp2_top5]",
        "test_distillation_matches_plain_torch_on_one_process[dp2_distopt_T2_top5]"],
}


def pytest_collection_modifyitems(config, items):
    long = {f"{path}::{name}" for path, names in LONG.items() for name in names}
    found = set()
    for item in items:
        if item.nodeid in long:
            item.add_marker(pytest.mark.long)
            found.add(item.nodeid)
    # A renamed test must not drop out of the list unnoticed (checked when whole files were
    # collected: no `-k`, no `file::test` selection).
    if config.getoption("keyword") or any("::" in arg for arg in config.args):
        return
    collected = {item.nodeid.split("::")[0] for item in items}
    missing = sorted(n for n in long - found if n.split("::")[0] in collected)
    if missing:
        raise pytest.UsageError(f"tests/conftest.py LONG names tests that do not exist: {missing}")
