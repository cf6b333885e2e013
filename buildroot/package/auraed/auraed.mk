################################################################################
#
# auraed: the project's static build, installed as is (see Config.in)
#
################################################################################

AURAED_VERSION = local
AURAED_SITE = $(call qstrip,$(BR2_PACKAGE_AURAED_PREBUILT))
AURAED_SITE_METHOD = local
AURAED_LICENSE = Apache-2.0

define AURAED_BUILD_CMDS
	@test -x $(@D)/auraed || { echo "auraed: $(@D)/auraed missing: run 'make build' in the Aurae checkout first"; exit 1; }
	@if readelf -lW $(@D)/auraed | grep -q 'Requesting program interpreter'; then \
		echo "auraed: $(@D)/auraed is dynamically linked; it must be static"; exit 1; fi
endef

define AURAED_INSTALL_TARGET_CMDS
	$(INSTALL) -D -m 0755 $(@D)/auraed $(TARGET_DIR)/usr/sbin/auraed
	ln -sf auraed $(TARGET_DIR)/usr/sbin/aer
endef

$(eval $(generic-package))
