################################################################################
#
# The kernel's configuration is the project's own, with one source of truth: after the
# kernel is patched, `make tinyconfig` and then kernel/aurae.config (and, for the metal
# flavor, kernel/metal.config) merged in allnoconfig mode, exactly as kernel/build.sh does.
# The result is the defconfig "aurae" (arch/x86/configs/aurae_defconfig in the kernel
# tree), which the defconfig selects with BR2_LINUX_KERNEL_DEFCONFIG="aurae".
# Buildroot has no tinyconfig mode: a merge over its default config would leave hundreds
# of options on. board/aurae/post-image.sh checks that every fragment line survived.
#
################################################################################

AURAE_KERNEL_FRAGMENTS = $(BR2_EXTERNAL_AURAE_PATH)/../kernel/aurae.config
ifeq ($(BR2_AURAE_KERNEL_METAL),y)
AURAE_KERNEL_FRAGMENTS += $(BR2_EXTERNAL_AURAE_PATH)/../kernel/metal.config
endif

define AURAE_LINUX_DEFCONFIG
	$(MAKE) -C $(@D) HOSTCC="$(HOSTCC_NOCCACHE)" ARCH=x86_64 tinyconfig
	cd $(@D) && ARCH=x86_64 HOSTCC="$(HOSTCC_NOCCACHE)" \
		scripts/kconfig/merge_config.sh -n .config $(AURAE_KERNEL_FRAGMENTS)
	cp $(@D)/.config $(@D)/arch/x86/configs/aurae_defconfig
	cat $(AURAE_KERNEL_FRAGMENTS) > $(@D)/.aurae-fragments
endef

ifeq ($(BR2_LINUX_KERNEL_DEFCONFIG),"aurae")
LINUX_POST_PATCH_HOOKS += AURAE_LINUX_DEFCONFIG
endif
